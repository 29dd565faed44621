"""The live probes of the monitor stage against a real model server, for a multiclass (string labels) and a
regression model with odd column names: answers checked per task, live accuracy or live MAE/RMSE equal to the
offline ones, single-row and batch answers agreeing; answers of the wrong shape are failures."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import DatasetSchema, PipelineConfig
from mlpipeline.serving import ServerThread, create_app
from mlpipeline.stages.monitor.live import LiveChecks, _check_answer, probe_endpoint
from tests import model_factory as mf
from tests.model_factory import Registry
from tests.stages.monitor.support import (
    FRUIT,
    FRUIT_SCHEMA,
    PRICE,
    PRICE_SCHEMA,
    fruit_frame,
    fruit_model,
    price_frame,
    price_model,
    training_features,
)

HOLDOUT_ROWS = 30


def _register(reg: Registry, model: Any, features: pd.DataFrame, name: str) -> str:
    """Log ``model`` signed, as the train stage does, register it as a version of ``name`` and make it champion."""
    import mlflow
    from mlflow.models import infer_signature

    from mlpipeline.registry import log_sklearn_model

    # The fluent API logs to the process-global URI, which a stage run earlier in this process may have moved.
    mlflow.set_tracking_uri(reg.tracking_uri)
    mlflow.set_registry_uri(reg.tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # integer-column hints
        signature = infer_signature(features, model.predict(features))
        with mlflow.start_run(experiment_id=reg.experiment_id):
            info = log_sklearn_model(model, signature=signature, input_example=features.head(3))
        version = str(mlflow.register_model(info.model_uri, name).version)
    reg.set_alias(name, version)
    return version


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module")
def served(reg: Registry) -> Iterator[dict[str, Any]]:
    """A multiclass and a regression champion, each behind its own running server."""
    fruit, price = fruit_model(fruit_frame(800, seed=0)), price_model(price_frame(800, seed=0))
    _register(reg, fruit, training_features(fruit_frame(50, seed=0), FRUIT_SCHEMA), "live_fruit")
    _register(reg, price, training_features(price_frame(50, seed=0), PRICE_SCHEMA), "live_price")
    fruit_app = create_app(tracking_uri=reg.tracking_uri, model_name="live_fruit", poll_seconds=0)
    price_app = create_app(tracking_uri=reg.tracking_uri, model_name="live_price", poll_seconds=0)
    with ServerThread(fruit_app) as fruit_server, ServerThread(price_app) as price_server:
        yield {"multiclass": (fruit, fruit_server.url), "regression": (price, price_server.url)}


def _config(url: str, task: str, schema: DatasetSchema) -> PipelineConfig:
    return PipelineConfig(
        dataset_schema=schema,
        serving_url=url,
        serving_timeout_seconds=10,
        monitor_requests=HOLDOUT_ROWS,
        monitor_latency_budget_ms=2000,
    ).resolved(task, schema)  # type: ignore[arg-type]


def _probe(url: str, task: str, schema: DatasetSchema, holdout: pd.DataFrame) -> LiveChecks:
    live = LiveChecks(latency_budget_ms=2000)
    probe_endpoint(_config(url, task, schema), holdout, None, live)
    return live


def test_multiclass_answers_are_checked_and_scored(served: dict[str, Any]) -> None:
    model, url = served["multiclass"]
    holdout = fruit_frame(HOLDOUT_ROWS, seed=7)
    live = _probe(url, "multiclass", FRUIT_SCHEMA, holdout)
    assert live.problems == [] and live.failures == 0, live.errors
    assert live.batch["ok"] is True and live.batch["disagreements"] == 0
    offline = float((model.predict(training_features(holdout, FRUIT_SCHEMA)) == holdout[FRUIT]).mean())
    assert live.scored == HOLDOUT_ROWS and live.live_accuracy == pytest.approx(offline)
    record = live.to_dict()
    assert "live_mae" not in record and record["live_accuracy"] == pytest.approx(offline)


def test_regression_answers_are_checked_and_scored_by_error(served: dict[str, Any]) -> None:
    model, url = served["regression"]
    holdout = price_frame(HOLDOUT_ROWS, seed=7)
    live = _probe(url, "regression", PRICE_SCHEMA, holdout)
    assert live.problems == [] and live.failures == 0, live.errors
    assert live.batch["ok"] is True and live.batch["disagreements"] == 0
    errors = np.abs(model.predict(training_features(holdout, PRICE_SCHEMA)) - holdout[PRICE].to_numpy())
    assert live.live_accuracy is None and live.scored == HOLDOUT_ROWS
    assert live.live_mae == pytest.approx(float(errors.mean()))
    assert live.live_rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))))
    record = live.to_dict()
    json.dumps(record, allow_nan=False)
    assert record["live_mae"] == live.live_mae and record["live_accuracy"] is None


def test_a_regression_answer_to_a_multiclass_pipeline_is_a_failure(served: dict[str, Any]) -> None:
    _, url = served["regression"]
    holdout = price_frame(5, seed=8).assign(**{FRUIT: "apple"})
    schema = DatasetSchema(target=FRUIT, columns=PRICE_SCHEMA.columns)
    live = LiveChecks(latency_budget_ms=2000)
    probe_endpoint(_config(url, "multiclass", schema).model_copy(update={"monitor_requests": 5}), holdout, None, live)
    assert live.failures == 6 and "expected 1 probabilities, got None" in live.errors[0]
    assert live.problems and "live prediction checks failed" in live.problems[0]


def _answer(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"model_name": "m", "model_version": "3", **body})


GOOD_MULTICLASS = {
    "predictions": ["b", "a"],
    "probabilities": [{"a": 0.25, "b": 0.5, "c (x/y)": 0.25}, {"a": 1.0, "b": 0.0, "c (x/y)": 0.0}],
    "classes": ["a", "b", "c (x/y)"],
}


@pytest.mark.parametrize(
    ("task", "body", "message"),
    [
        ("multiclass", {**GOOD_MULTICLASS, "predictions": ["b", "z"]}, "row 1: label z is not one of the classes"),
        (
            "multiclass",
            {**GOOD_MULTICLASS, "probabilities": [{"a": 0.5, "b": 0.5}, GOOD_MULTICLASS["probabilities"][1]]},
            "row 0: expected a probability for each class",
        ),
        (
            "multiclass",
            {**GOOD_MULTICLASS, "probabilities": [{"a": 0.5, "b": 0.5, "c (x/y)": 0.5}] * 2},
            "row 0: probabilities sum to 1.5, not 1",
        ),
        ("multiclass", {**GOOD_MULTICLASS, "classes": None}, "expected the model's classes"),
        ("multiclass", {**GOOD_MULTICLASS, "probabilities": [0.5, 0.5]}, "expected a probability for each class"),
        ("regression", {"predictions": [1.5, "2"]}, "expected a finite number per row from a regressor"),
        ("regression", {"predictions": [1.5]}, "expected 2 prediction(s)"),
        ("binary", {"predictions": [0, 1], "probabilities": [0.2, 1.2], "classes": [0, 1]}, "outside [0, 1]"),
    ],
)
def test_answers_of_the_wrong_shape_are_refused(task: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        _check_answer(_answer(body), 2, "3", task)
    assert message in str(caught.value)


def test_answers_of_the_right_shape_pass() -> None:
    assert _check_answer(_answer(GOOD_MULTICLASS), 2, "3", "multiclass")["predictions"] == ["b", "a"]
    assert _check_answer(_answer(GOOD_MULTICLASS), 2, "3", None)["classes"] == GOOD_MULTICLASS["classes"]
    assert _check_answer(_answer({"predictions": [1.5, -2]}), 2, "3", "regression")["predictions"] == [1.5, -2]
    binary = {"predictions": [0, 1], "probabilities": [0.2, 0.9], "classes": [0, 1]}
    assert _check_answer(_answer(binary), 2, "3", "binary")["probabilities"] == [0.2, 0.9]
