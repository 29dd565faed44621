"""The small-request fast path (a numpy re-expression of the product's pipeline): exactness, and a guard that a
scikit-learn upgrade cannot silently switch it off for the model types the train stage offers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import sklearn
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from mlpipeline.payload import json_rows
from mlpipeline.serving import InputColumn, InputError, InputSchema, LoadedModel, create_app
from mlpipeline.serving.fastpath import BoostedTrees, NotCompilable, compile_pipeline, verify_fast_path
from mlpipeline.serving.loading import prediction_plan
from mlpipeline.stages.etl import EtlResult
from mlpipeline.stages.train import load_holdout, train
from tests import model_factory as mf
from tests.model_factory import FEATURES
from tests.pipeline_data import Workspace


def _product_model(model_type: str) -> tuple[Any, InputSchema, pd.DataFrame]:
    """A pipeline from the train stage's own build_pipeline, fitted on the bundled churn data (with gaps)."""
    from mlpipeline.config import default_schema
    from mlpipeline.dev.datasource import generate_churn_dataset
    from mlpipeline.stages.train import build_pipeline

    schema = default_schema()
    raw = generate_churn_dataset(600, seed=5, malformed_rate=0, duplicate_rate=0, missing_rate=0.05)
    features = pd.DataFrame(index=raw.index)
    for column in schema.columns:
        if column.type == "categorical":
            features[column.name] = raw[column.name].astype(object).where(raw[column.name].notna(), np.nan)
        elif column.type == "date":
            features[column.name] = pd.to_datetime(raw[column.name])
        elif column.type == "boolean":
            features[column.name] = raw[column.name].map({"true": 1.0, "false": 0.0}).astype("float64")
        else:  # as the train stage feeds them: float64, so gaps reach the imputer
            features[column.name] = raw[column.name].astype("float64")
    hyperparameters = {"max_iter": 40} if model_type == "hist_gradient_boosting" else {}
    if model_type == "random_forest":
        hyperparameters = {"n_estimators": 10, "n_jobs": 1}
    pipeline = build_pipeline(schema, model_type, hyperparameters, 0).fit(features, raw[schema.target].astype(int))
    types = {"categorical": "string", "date": "datetime"}
    input_schema = InputSchema(tuple(InputColumn(c.name, types.get(c.type, "double")) for c in schema.columns))
    return pipeline, input_schema, features


def _loaded(pipeline: Any, schema: InputSchema) -> LoadedModel:
    preprocess, final_step, labels_are_argmax = prediction_plan(pipeline)
    return LoadedModel(
        name="m", version="1", alias="champion", run_id=None, model=pipeline, schema=schema,
        classes=tuple(pipeline.classes_), positive_index=1, metrics={}, trained_at=None, data_fingerprint=None,
        source=None, loaded_at="", preprocess=preprocess, final_step=final_step, labels_are_argmax=labels_are_argmax,
    )  # fmt: skip


@pytest.mark.parametrize("model_type", ["hist_gradient_boosting", "logistic_regression", "random_forest"])
def test_fast_path_gives_exactly_the_sklearn_answers(model_type: str) -> None:
    pipeline, schema, features = _product_model(model_type)
    general = _loaded(pipeline, schema)
    example = json_rows(features.head(5))
    status = verify_fast_path(general, example, "test")
    assert status.active, f"the product's pipeline must get the fast path: {status.reason}"
    quick = dataclasses.replace(general, fast_path=status)
    rows = json_rows(features.iloc[5:200])
    for i, row in enumerate(rows):  # gaps in every column, unseen categories, booleans as numbers
        column = schema.columns[i % len(schema.columns)].name
        row[column] = None if i % 3 else row[column]
        if i % 11 == 0:
            row["region"] = "atlantis"
    for size in (1, 2, 5, 16):
        for start in range(0, len(rows) - size, 23):
            chunk = rows[start : start + size]
            assert quick.predict_rows(chunk) == general.predict_rows(chunk)
    # Larger requests go through sklearn itself.
    assert quick.predict_rows(rows) == general.predict(schema.frame(rows))


def test_models_with_the_column_transformer_of_our_own_steps_keep_the_fast_path() -> None:
    """Registered models saved before FeatureMatrix (a ColumnTransformer of MedianImputer, StandardScaler and
    CategoryOneHot) still compile, bit for bit; a FeatureMatrix that dropped an all-missing column does not."""
    from sklearn.base import clone
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlpipeline.features import CategoryOneHot, MedianImputer

    current, schema, features = _product_model("logistic_regression")
    matrix = current.named_steps["preprocess"]
    scaled = Pipeline([("impute", MedianImputer()), ("scale", StandardScaler())])
    columns = ColumnTransformer(
        [("numeric", scaled, matrix.numeric), ("categorical", CategoryOneHot(), matrix.categorical)]
    )
    model = clone(current[-1])
    earlier = Pipeline([("dates", current.named_steps["dates"]), ("preprocess", columns), ("model", model)])
    earlier.fit(features, _target(features))
    general = _loaded(earlier, schema)
    status = verify_fast_path(general, json_rows(features.head(5)), "test")
    assert status.active, status.reason
    quick = dataclasses.replace(general, fast_path=status)
    rows = json_rows(features.iloc[5:60])
    assert all(quick.predict_rows([row]) == general.predict_rows([row]) for row in rows)

    holed = features.assign(age=np.nan)
    dropped = clone(current).fit(holed, _target(features))
    with pytest.raises(NotCompilable, match="its numeric columns: MedianImputer dropped an all-missing column"):
        compile_pipeline(dropped, schema, True)


def _target(features: pd.DataFrame) -> np.ndarray:
    return (features["tenure_months"].fillna(0).to_numpy() < 12).astype(int)


def test_fast_path_still_validates_input() -> None:
    pipeline, schema, features = _product_model("hist_gradient_boosting")
    general = _loaded(pipeline, schema)
    quick = dataclasses.replace(general, fast_path=verify_fast_path(general, json_rows(features.head(5)), "test"))
    assert quick.fast is not None
    rows = json_rows(features.head(2))
    rows[1]["age"] = "old"
    with pytest.raises(InputError, match="row 1, column 'age': expected a number"):
        quick.predict_rows(rows)
    del rows[1]["age"]
    with pytest.raises(InputError, match=r"missing column\(s\) \['age'\]"):
        quick.predict_rows(rows)


def test_fast_path_is_refused_when_it_would_differ_or_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, schema, features = _product_model("hist_gradient_boosting")
    general = _loaded(pipeline, schema)
    example = json_rows(features.head(5))
    original = BoostedTrees.predict
    monkeypatch.setattr(BoostedTrees, "predict", lambda self, x: original(self, x) + 1e-12)
    refused = verify_fast_path(general, example, "test")
    assert not refused.active and "disagrees with scikit-learn on verification row 0" in refused.reason
    monkeypatch.undo()
    # The test factory's pipeline uses sparse one-hot output: not a shape the fast path reproduces.
    logged = mf.build_pipeline().fit(mf.make_frame(200)[FEATURES], mf.make_frame(200)[mf.TARGET])
    with pytest.raises(NotCompilable, match="transformer 'cat': OneHotEncoder with sparse_output=True"):
        compile_pipeline(logged, schema, True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlpipeline.serving.fastpath"):
        unverifiable = verify_fast_path(_loaded(logged, schema), example, "test")
    assert not unverifiable.active and "sparse_output=True" in unverifiable.reason
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and unverifiable.reason in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Guard: the train stage's own models, trained, logged, registered and served end to end, get the fast path.
# ---------------------------------------------------------------------------------------------------------------

# Every model type the train stage offers, with small settings so training takes a moment.
SUPPORTED_MODEL_TYPES: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 10, "n_jobs": 1},
    "hist_gradient_boosting": {"max_iter": 40},
    "logistic_regression": {},
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    # The serving tests' registry as tracking store: train() points the process-global MLflow URI at it, and
    # tests.model_factory logs through that global URI.
    return Workspace(root=tmp_path_factory.mktemp("fastpath"), tracking_uri=mf.registry().tracking_uri)


@pytest.fixture(scope="module")
def processed(ws: Workspace) -> EtlResult:
    return ws.processed("fastpath", rows=800)


@pytest.fixture
def served(ws: Workspace, processed: EtlResult, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, Any]]:
    """(HTTP client of a server app, train result) for a model of type ``request.param`` promoted to champion."""
    model_type = request.param
    config = ws.config(ml_model_type=model_type, hyperparameters=SUPPORTED_MODEL_TYPES[model_type])
    result = train(config, run=f"fastpath-{model_type}", processed_data_path=processed.data_path, data_sha256="0")
    name = f"fastpath_{model_type}"
    version = mlflow.register_model(result.model_uri, name).version  # as the deploy stage registers
    MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri).set_registered_model_alias(name, "champion", version)
    with TestClient(create_app(tracking_uri=ws.tracking_uri, model_name=name, poll_seconds=0)) as client:
        yield client, result


def _gauge(text: str, name: str) -> float:
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    assert len(samples) == 1, f"{name} not exposed once: {samples}"
    return samples[0].value


@pytest.mark.parametrize("served", list(SUPPORTED_MODEL_TYPES), indirect=True)
def test_supported_model_types_are_served_through_the_fast_path_bit_for_bit(
    served: tuple[TestClient, Any], ws: Workspace
) -> None:
    """Fails when a scikit-learn upgrade (private attributes of fitted estimators) turns the fast path off."""
    client, result = served
    body = client.get("/model").json()
    assert body["fast_path"] == {"active": True, "reason": None}, (
        f"scikit-learn {sklearn.__version__}: the numpy fast path is off for {result.model_type}; "
        "update mlpipeline/serving/fastpath.py for this scikit-learn version"
    )
    assert _gauge(client.get("/metrics").text, "mlpipeline_serving_fast_path_active") == 1
    loaded = client.app.state.server.model
    if result.model_type == "hist_gradient_boosting":
        assert loaded.fast.trees is not None, "the boosted trees must be traversed in numpy, not by sklearn"
    features, _ = load_holdout(result.holdout_path, ws.config().dataset_schema)
    rows = json_rows(features)
    for i, row in enumerate(rows):  # gaps in every column and unseen categories, as live traffic has them
        if i % 4 == 1:
            row[loaded.schema.columns[i % len(loaded.schema.columns)].name] = None
        if i % 9 == 0:
            row["region"] = "atlantis"
    checked = 0
    for size in (1, 3, 16):
        for start in range(0, len(rows) - size, 13):
            chunk = rows[start : start + size]
            labels, probabilities = loaded.predict_rows(chunk)  # the fast path (up to 16 rows)
            frame = loaded.schema.frame(chunk)
            assert probabilities == loaded.model.predict_proba(frame)[:, loaded.positive_index].tolist()
            assert labels == loaded.model.predict(frame).tolist()
            checked += 1
    assert checked > 20
