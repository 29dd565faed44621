"""The HTTP endpoints: /health, /model, /reload, /predict, /metrics (state lives in ``app.state``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlpipeline.serving.loading import LoadedModel
from mlpipeline.serving.schema import InputError
from mlpipeline.serving.settings import ServerSettings
from mlpipeline.serving.state import ModelServer

# Above this many rows the (pure Python) validation runs in the thread pool instead of blocking the event loop.
INLINE_ROWS = 256

PREDICT_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["rows"],
                    "properties": {
                        "rows": {
                            "type": "array",
                            "items": {"type": "object", "additionalProperties": True},
                            "description": "Feature rows; every input column of the model, null for missing.",
                        }
                    },
                }
            }
        },
    }
}

router = APIRouter()


class FastJSONResponse(JSONResponse):
    # Skips FastAPI's jsonable_encoder walk (slow on 10k-float lists); content is plain JSON types already.
    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode("utf-8")


class _Rejected(Exception):
    """A /predict request refused before prediction: the HTTP status and what is wrong."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return FastJSONResponse({"detail": detail, **extra}, status_code=status)


def _server(request: Request) -> ModelServer:
    return request.app.state.server


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    status, body = _server(request).health()
    return FastJSONResponse(body, status_code=status)


@router.get("/model")
async def model_info(request: Request) -> JSONResponse:
    status, body = _server(request).model_body()
    return FastJSONResponse(body, status_code=status)


@router.post("/reload")
def reload(request: Request, force: bool = False) -> JSONResponse:
    # Sync endpoint: FastAPI runs it in the thread pool, so loading does not block other requests.
    server = _server(request)
    ok = server.refresh(force=force)
    status, body = server.model_body()
    return FastJSONResponse(body, status_code=status if ok else 503)


def _request_rows(body: bytes, max_rows: int) -> list[Any]:
    """The rows of a /predict body; raises :class:`_Rejected` if the body is not a usable ``{"rows": [...]}``."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Rejected(422, f"request body is not valid JSON: {exc}") from None
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise _Rejected(422, 'request body must be an object {"rows": [ {column: value, ...}, ... ]}')
    if not rows:
        raise _Rejected(422, "rows is empty; send at least one row")
    if len(rows) > max_rows:
        raise _Rejected(413, f"too many rows: {len(rows)} > {max_rows}; split the request")
    return rows


async def _predict(model: LoadedModel, rows: list[Any]) -> tuple[list[Any], list[float]]:
    if len(rows) <= INLINE_ROWS:
        return model.predict_rows(rows)
    return await run_in_threadpool(model.predict_rows, rows)


@router.post("/predict", openapi_extra=PREDICT_BODY_SCHEMA)
async def predict(request: Request) -> JSONResponse:
    server = _server(request)
    model = server.model  # read the reference once: a concurrent swap cannot change it mid-request
    if model is None:
        return _error(503, f"no model loaded for {server.model_name!r} (alias {server.alias!r}); try again later")
    settings: ServerSettings = request.app.state.settings
    try:
        rows = _request_rows(await request.body(), settings.max_rows)
        predictions, probabilities = await _predict(model, rows)
    except _Rejected as exc:
        return _error(exc.status, exc.detail)
    except InputError as exc:
        return _error(422, f"invalid input: {exc}", errors=exc.errors, error_count=exc.total)
    server.metrics.predictions.inc(len(rows))
    return FastJSONResponse(
        {
            "model_name": model.name,
            "model_version": model.version,
            "predictions": predictions,
            "probabilities": probabilities,
        }
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_server(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The paths the metrics label by name; any other path is counted as "other".
ROUTE_PATHS = frozenset(route.path for route in router.routes)
