"""The OpenAPI document of the server: /predict's answers for each task, and its request rows as the input columns
of the model being served (names exactly as in the data: spaces, slashes and brackets included).

The app's routes are fixed while the model is swapped underneath, so the row schema is filled in each time the
document is asked for, from the model served at that moment; with no model it stays generic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from mlpipeline.serving.loading import LoadedModel

PREDICT_PATH = "/predict"

_GENERIC_ROWS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "object", "additionalProperties": True},
    "description": "Feature rows; every input column of the model, null for missing.",
}

_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["model_name", "model_version", "predictions"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "predictions": {
            "type": "array",
            "items": {"type": ["string", "number", "integer", "boolean"]},
            "description": "Per row: a classifier's class label (one of classes), a regressor's number.",
        },
        "probabilities": {
            "type": "array",
            "items": {
                "oneOf": [
                    {"type": "number", "description": "binary: the probability of the positive (last) class"},
                    {
                        "type": "object",
                        "additionalProperties": {"type": "number"},
                        "description": "multiclass: each class label, as text, and its probability",
                    },
                ]
            },
            "description": "Classifiers only (absent for a regressor).",
        },
        "classes": {
            "type": "array",
            "items": {"type": ["string", "number", "integer", "boolean"]},
            "description": "Classifiers only: the model's classes, in order; the last is the positive one (binary).",
        },
    },
}

PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["rows"], "properties": {"rows": _GENERIC_ROWS}}
            }
        },
    },
    "responses": {"200": {"content": {"application/json": {"schema": _ANSWER}}}},
}

# MLflow column types as JSON Schema; every column may be null (the model imputes it).
_JSON_TYPES: dict[str, dict[str, Any]] = {
    "long": {"type": ["integer", "null"]},
    "integer": {"type": ["integer", "null"]},
    "double": {"type": ["number", "null"]},
    "float": {"type": ["number", "null"]},
    "string": {"type": ["string", "null"]},
    "boolean": {"type": ["boolean", "null"]},
    "datetime": {"type": ["string", "null"], "format": "date-time"},
}


def rows_schema(model: LoadedModel) -> dict[str, Any]:
    """The ``rows`` of a /predict request for ``model``: objects with exactly its input columns."""
    columns = model.schema.columns
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {c.name: dict(_JSON_TYPES.get(c.type, {})) for c in columns},
            "required": [c.name for c in columns if c.required],
            "additionalProperties": False,
        },
        "description": f"Feature rows for {model.name} version {model.version} ({model.task}); null for missing.",
    }


def install(app: FastAPI, served: Callable[[], LoadedModel | None]) -> None:
    """Make ``app.openapi()`` describe /predict's rows for the model ``served()`` returns at that moment."""
    generate = app.openapi  # FastAPI's own, which caches the static document

    def openapi() -> dict[str, Any]:
        document = generate()
        model = served()
        if model is None:
            return document
        document = copy.deepcopy(document)
        operation = document.get("paths", {}).get(PREDICT_PATH, {}).get("post", {})
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if body is not None:
            body["properties"]["rows"] = rows_schema(model)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
