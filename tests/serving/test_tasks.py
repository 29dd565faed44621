"""The server answers per task: a multiclass classifier (iris, text labels) and a regressor (diabetes), trained with
the train stage's pipeline shape, logged, signed and registered; column names with spaces, slashes and brackets.

/predict shapes against the offline model, 422s naming odd columns, /model, the OpenAPI rows, a hot swap between a
multiclass and a regression model, and the fast path: bit for bit with scikit-learn for every model type, or off
with the reason shown."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlpipeline.serving import LoadedModel, create_app
from mlpipeline.serving.fastpath import NOT_VERIFIED, BoostedTrees, verify_fast_path
from tests import model_factory as mf
from tests.model_factory import Registry
from tests.serving import task_models as tm
from tests.serving.task_models import ServedModel

TASK_MODELS = [(task, model_type) for task, types in tm.ESTIMATORS.items() for model_type in types]


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module")
def multiclass(reg: Registry) -> ServedModel:
    return tm.log_and_register(reg, "tasks_multiclass", "multiclass", "hist_gradient_boosting")


@pytest.fixture(scope="module")
def regression(reg: Registry) -> ServedModel:
    return tm.log_and_register(reg, "tasks_regression", "regression", "hist_gradient_boosting")


def _client(reg: Registry, name: str) -> TestClient:
    return TestClient(create_app(tracking_uri=reg.tracking_uri, model_name=name, poll_seconds=0))


@pytest.fixture(scope="module")
def multiclass_client(reg: Registry, multiclass: ServedModel) -> Iterator[TestClient]:
    with _client(reg, multiclass.name) as client:
        yield client


@pytest.fixture(scope="module")
def regression_client(reg: Registry, regression: ServedModel) -> Iterator[TestClient]:
    with _client(reg, regression.name) as client:
        yield client


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['MLPIPELINE_SERVING_TOKEN']}"}


def _assert_multiclass_answer(body: dict[str, Any], served: ServedModel, start: int, stop: int) -> None:
    frame = served.data.features.iloc[start:stop]
    classes = list(served.model.classes_)
    assert body["model_version"] == served.version
    assert set(body) == {"model_name", "model_version", "predictions", "probabilities", "classes"}
    assert body["classes"] == classes == ["Iris setosa", "Iris versicolor", "Iris virginica"]
    assert body["predictions"] == served.model.predict(frame).tolist()
    assert all(set(row) == set(classes) for row in body["probabilities"])
    got = np.array([[row[c] for c in classes] for row in body["probabilities"]])
    np.testing.assert_allclose(got, served.model.predict_proba(frame), rtol=0, atol=1e-12)


def _assert_regression_answer(body: dict[str, Any], served: ServedModel, start: int, stop: int) -> None:
    frame = served.data.features.iloc[start:stop]
    assert body["model_version"] == served.version
    assert set(body) == {"model_name", "model_version", "predictions"}  # numbers only
    assert all(type(p) is float for p in body["predictions"])
    np.testing.assert_allclose(body["predictions"], served.model.predict(frame), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# /predict and /model per task.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (3, 6), (10, 26), (0, 150)], ids=["1", "3", "16", "150"])
def test_multiclass_answers_labels_each_class_probability_and_the_classes(
    multiclass_client: TestClient, multiclass: ServedModel, start: int, stop: int
) -> None:
    response = multiclass_client.post("/predict", json={"rows": multiclass.rows(start, stop)})
    assert response.status_code == 200, response.text
    _assert_multiclass_answer(response.json(), multiclass, start, stop)


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (3, 6), (10, 26), (0, 300)], ids=["1", "3", "16", "300"])
def test_regression_answers_numbers_only(
    regression_client: TestClient, regression: ServedModel, start: int, stop: int
) -> None:
    response = regression_client.post("/predict", json={"rows": regression.rows(start, stop)})
    assert response.status_code == 200, response.text
    _assert_regression_answer(response.json(), regression, start, stop)


def test_model_endpoint_reports_the_task_and_the_classes(
    multiclass_client: TestClient, regression_client: TestClient, multiclass: ServedModel
) -> None:
    body = multiclass_client.get("/model").json()
    assert body["task"] == "multiclass" and body["classes"] == list(multiclass.model.classes_)
    assert body["positive_class"] is None
    assert [c["name"] for c in body["input_schema"]] == multiclass.data.feature_names
    body = regression_client.get("/model").json()
    assert body["task"] == "regression" and body["classes"] == [] and body["positive_class"] is None


def test_integer_class_labels_are_json_numbers_and_text_keys(reg: Registry) -> None:
    model, data = tm.fitted("multiclass", "random_forest")
    numbered = dataclasses.replace(data, target=data.target.map({v: k for k, v in tm.SPECIES.items()}))
    model.fit(numbered.features, numbered.target.astype("int64"))
    loaded = _loaded(model)
    predictions, probabilities = loaded.predict_rows(tm.json_rows(data.features.head(4)))
    assert predictions == model.predict(data.features.head(4)).tolist() and all(type(p) is int for p in predictions)
    assert loaded.class_values == [0, 1, 2] and all(list(row) == ["0", "1", "2"] for row in probabilities)


# ---------------------------------------------------------------------------------------------------------------
# Bad input, odd column names, the OpenAPI document.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_bad_input_is_refused_with_422_naming_odd_columns(
    task: str, multiclass_client: TestClient, regression_client: TestClient
) -> None:
    client = multiclass_client if task == "multiclass" else regression_client
    numeric = tm.IRIS_NUMERIC[1] if task == "multiclass" else tm.DIABETES_NUMERIC[1]
    rows = tm.json_rows(tm.data_for(task).features.head(2))
    cases = [
        (lambda r: r.pop(numeric), [f"missing column(s) [{numeric!r}]"]),
        (lambda r: r.update({numeric: "tall"}), [f"row 1, column {numeric!r}: expected a number"]),
        (lambda r: r.update({tm.DATE: "31/12/2020"}), [f"row 1, column {tm.DATE!r}", "ISO 8601"]),
        (lambda r: r.update({"Sample Number / id": 7}), ["unknown column(s) ['Sample Number / id']"]),
    ]
    for change, fragments in cases:
        bad = [dict(row) for row in rows]
        change(bad[1])
        response = client.post("/predict", json={"rows": bad})
        assert response.status_code == 422, response.text
        assert all(fragment in response.json()["detail"] for fragment in fragments), response.json()
        assert response.json()["errors"][0]["row"] == 1
    assert client.post("/predict", json={"rows": []}).status_code == 422
    assert client.post("/predict", json={"rows": rows[:1] * 10_001}).status_code == 413


def test_openapi_lists_the_served_models_columns_by_their_names(
    reg: Registry, multiclass_client: TestClient, multiclass: ServedModel
) -> None:
    document = multiclass_client.get("/openapi.json").json()
    operation = document["paths"]["/predict"]["post"]
    rows = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["rows"]
    assert list(rows["items"]["properties"]) == multiclass.data.feature_names
    assert rows["items"]["properties"]["Delta 15 N (o/oo)"] == {"type": ["number", "null"]}
    assert rows["items"]["properties"][tm.DATE] == {"type": ["string", "null"], "format": "date-time"}
    assert rows["items"]["properties"][tm.ISLAND] == {"type": ["string", "null"]}
    assert rows["items"]["additionalProperties"] is False
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"predictions", "probabilities", "classes"} <= set(answer["properties"])
    # Without a model the document stays the generic one.
    with _client(reg, "tasks_nothing_registered") as empty:
        generic = empty.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        items = generic["content"]["application/json"]["schema"]["properties"]["rows"]["items"]
        assert items == {"type": "object", "additionalProperties": True}


# ---------------------------------------------------------------------------------------------------------------
# Hot swap between tasks.
# ---------------------------------------------------------------------------------------------------------------


def test_hot_swap_between_a_multiclass_and_a_regression_model(
    reg: Registry, multiclass: ServedModel, regression: ServedModel
) -> None:
    name = "tasks_swap"
    first = dataclasses.replace(multiclass, version=reg.register(_logged(reg, multiclass), name).version)
    second = dataclasses.replace(regression, version=reg.register(_logged(reg, regression), name, alias=None).version)
    with _client(reg, name) as client:
        for served, assert_answer, other in [
            (first, _assert_multiclass_answer, second),
            (second, _assert_regression_answer, first),
            (first, _assert_multiclass_answer, second),
        ]:
            reg.set_alias(name, served.version)
            reloaded = client.post("/reload", headers=_auth())
            assert reloaded.status_code == 200 and reloaded.json()["version"] == served.version
            assert reloaded.json()["task"] == ("multiclass" if served is first else "regression")
            assert reloaded.json()["fast_path"]["active"] is True
            for start, stop in [(0, 1), (0, 40)]:
                response = client.post("/predict", json={"rows": served.rows(start, stop)})
                assert response.status_code == 200, response.text
                assert_answer(response.json(), served, start, stop)
            # The other model's rows do not fit this model's columns.
            refused = client.post("/predict", json={"rows": other.rows(0, 1)})
            assert refused.status_code == 422 and "unknown column(s)" in refused.json()["detail"]


def _logged(reg: Registry, served: ServedModel) -> mf.LoggedModel:
    """The fields Registry.register needs to register another version of an already logged model."""
    version = reg.client.get_model_version(served.name, served.version)
    return mf.LoggedModel(
        name=served.name, version=served.version, run_id=served.run_id, model_id=version.model_id,
        source=version.source, model=served.model, metrics={}, data_sha256="", trained_at="", artifact_dir=None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The fast path per task and model type.
# ---------------------------------------------------------------------------------------------------------------


def _loaded(model: Any, data: tm.TaskData | None = None) -> LoadedModel:
    """A LoadedModel as load_model_version builds it, without the registry."""
    from mlflow.models import infer_signature

    from mlpipeline.serving import InputSchema
    from mlpipeline.serving.loading import _positive_index, model_task, prediction_plan

    data = data or (tm.iris_data() if hasattr(model, "classes_") else tm.diabetes_data())
    schema = InputSchema.from_signature(infer_signature(data.features.head(5)))
    task, classes = model_task(model, "test")
    preprocess, final_step, labels_are_argmax = prediction_plan(model)
    return LoadedModel(
        name="m", version="1", alias="champion", run_id=None, model=model, schema=schema, classes=classes,
        positive_index=_positive_index(classes), metrics={}, trained_at=None, data_fingerprint=None, source=None,
        loaded_at="", preprocess=preprocess, final_step=final_step, labels_are_argmax=labels_are_argmax, task=task,
    )  # fmt: skip


def _traffic(data: tm.TaskData) -> list[dict[str, Any]]:
    """Held-out-like rows with a gap in a different column each and unseen categories, as live traffic has."""
    rows = tm.json_rows(data.features)
    for i, row in enumerate(rows):
        if i % 3 == 1:
            row[data.feature_names[i % len(data.feature_names)]] = None
        if i % 7 == 0:
            row[tm.ISLAND] = "Anvers"
    return rows


@pytest.mark.parametrize(("task", "model_type"), TASK_MODELS)
def test_fast_path_serves_every_task_and_model_type_bit_for_bit(task: str, model_type: str) -> None:
    model, data = tm.fitted(task, model_type)
    general = _loaded(model, data)
    status = verify_fast_path(general, tm.json_rows(data.features.head(5)), "test")
    assert status.active, f"{task} {model_type}: {status.reason}"
    if model_type == "hist_gradient_boosting":
        assert status.pipeline.trees is not None, "the boosted trees must be traversed in numpy"
    quick = dataclasses.replace(general, fast_path=status)
    rows = _traffic(data)
    checked = 0
    for size in (1, 2, 5, 16):
        for start in range(0, len(rows) - size, 11):
            chunk = rows[start : start + size]
            answer = quick.predict_rows(chunk)
            assert answer == general.predict_rows(chunk)
            frame = general.schema.frame(chunk)
            assert answer[0] == model.predict(frame).tolist()  # labels / numbers exactly as scikit-learn's
            if task == "multiclass":
                keys = general.class_keys
                got = [[row[k] for k in keys] for row in answer[1]]
                assert got == model.predict_proba(frame).tolist()
            checked += 1
    assert checked >= 50


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_fast_path_falls_back_visibly_when_it_would_differ(
    task: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, data = tm.fitted(task, "hist_gradient_boosting")
    general = _loaded(model, data)
    original = BoostedTrees.predict
    monkeypatch.setattr(BoostedTrees, "predict", lambda self, x: original(self, x) * (1 + 1e-12))
    with caplog.at_level(logging.WARNING, logger="mlpipeline.serving.fastpath"):
        refused = verify_fast_path(general, tm.json_rows(data.features.head(5)), "test")
    assert not refused.active and "disagrees with scikit-learn on verification row 0" in refused.reason
    assert refused.reason in caplog.text
    served = dataclasses.replace(general, fast_path=refused)
    rows = tm.json_rows(data.features.head(3))
    assert served.predict_rows(rows) == dataclasses.replace(general, fast_path=NOT_VERIFIED).predict(
        general.schema.frame(rows)
    )


def test_fast_path_is_off_with_the_reason_for_a_pipeline_it_does_not_reproduce(
    reg: Registry, multiclass_client: TestClient
) -> None:
    model, data = tm.fitted("regression", "random_forest")
    model.named_steps["preprocess"].set_output(transform="pandas")
    status = verify_fast_path(_loaded(model, data), tm.json_rows(data.features.head(5)), "test")
    assert not status.active and "set_output(transform=...)" in status.reason
    assert multiclass_client.get("/model").json()["fast_path"] == {"active": True, "reason": None}
