"""POST /feedback: the actual outcome of a logged prediction, checked against the logged request and the task and
classes of the version that answered it, stored as an upsert (SQLite prediction log in a tmp dir)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from mlpipeline.prediction_store import engine_for, feedback
from mlpipeline.serving import create_app
from mlpipeline.serving.feedback import MAX_FEEDBACK_ITEMS
from tests import model_factory as mf
from tests.model_factory import Registry
from tests.serving import task_models as tm

AUTH = {"Authorization": f"Bearer {os.environ['MLPIPELINE_SERVING_TOKEN']}"}


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


def _app(reg: Registry, name: str, log_url: str | None) -> TestClient:
    return TestClient(
        create_app(tracking_uri=reg.tracking_uri, model_name=name, poll_seconds=0, prediction_log_url=log_url)
    )


@pytest.fixture(scope="module")
def binary(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    reg.register(reg.base(0), "fb_binary")
    url = f"sqlite:///{tmp_path_factory.mktemp('fb') / 'log.db'}"
    with _app(reg, "fb_binary", url) as client:
        yield client, url


def _predict(client: TestClient, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    return response.json()


def _stored(url: str, request_id: str) -> dict[int, Any]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(select(feedback).where(feedback.c.request_id == request_id)).all()
    finally:
        engine.dispose()
    return {row.row_index: row.actual for row in found}


def _feedback_total(client: TestClient) -> float:
    text = generate_latest(client.app.state.server.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlpipeline_serving_feedback_total":
                return sample.value
    raise AssertionError("mlpipeline_serving_feedback_total not exposed")


def test_feedback_needs_the_token_and_the_prediction_log(reg: Registry, binary: tuple[TestClient, str]) -> None:
    client, _ = binary
    answer = _predict(client, mf.rows_for_request(mf.make_frame(1, seed=40)))
    item = {"request_id": answer["request_id"], "actual": 1}
    assert client.post("/feedback", json=item).status_code == 401
    assert client.post("/feedback", json=item, headers={"Authorization": "Bearer wrong"}).status_code == 401
    with _app(reg, "fb_binary", None) as unlogged:
        response = unlogged.post("/feedback", json=item, headers=AUTH)
        assert response.status_code == 404
        assert "MLPIPELINE_PREDICTION_LOG_URL is not set" in response.json()["detail"]
        assert "request_id" not in _predict(unlogged, mf.rows_for_request(mf.make_frame(1, seed=40)))


def test_feedback_round_trip_is_stored_and_a_repost_replaces_it(binary: tuple[TestClient, str]) -> None:
    client, url = binary
    before = _feedback_total(client)
    answer = _predict(client, mf.rows_for_request(mf.make_frame(3, seed=41)))
    request_id = answer["request_id"]
    # Posted at once: the prediction may still be queued for the writer; /feedback waits for it.
    first = client.post("/feedback", json={"request_id": request_id, "actual": 1.0}, headers=AUTH)
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 1}
    batch = [{"request_id": request_id, "row": row, "actual": 0} for row in (1, 2)]
    assert client.post("/feedback", json={"feedback": batch}, headers=AUTH).json() == {"stored": 2}
    assert _stored(url, request_id) == {0: 1, 1: 0, 2: 0}  # 1.0 is the class 1, stored as /predict answers it
    again = client.post("/feedback", json={"request_id": request_id, "row": 0, "actual": 0}, headers=AUTH)
    assert again.json() == {"stored": 1}
    assert _stored(url, request_id) == {0: 0, 1: 0, 2: 0}
    assert _feedback_total(client) == before + 4


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        ({"request_id": "f" * 32, "actual": 1}, ["unknown request_id", "f" * 32]),
        ({"row": 3, "actual": 1}, ["has no row 3", "predicted 3 row(s)"]),
        ({"actual": "1"}, ["actual str '1' is text", "send 1"]),
        ({"actual": True}, ["not one of the model's classes", "int 0, int 1"]),
        ({"actual": 2}, ["actual int 2 is not one of the model's classes"]),
        ({"actual": None}, ["actual is missing"]),
        ({"row": "0", "actual": 1}, ["row must be a row index"]),
        ({"row": -1, "actual": 1}, ["row must be a row index"]),
        ({"actual": 1, "label": 1}, ["unknown key(s)"]),
        ({"request_id": 7, "actual": 1}, ["request_id must be"]),
    ],
    ids=["unknown-id", "no-such-row", "label-as-text", "boolean", "not-a-class", "null", "row-text", "row-negative",
         "extra-key", "id-not-text"],
)  # fmt: skip
def test_invalid_feedback_is_422_naming_the_problem(
    binary: tuple[TestClient, str], item: dict[str, Any], fragments: list[str]
) -> None:
    client, url = binary
    request_id = _predict(client, mf.rows_for_request(mf.make_frame(3, seed=42)))["request_id"]
    item = {"request_id": request_id, **item}
    # In a batch with a valid item: nothing of the batch is stored.
    good = {"request_id": request_id, "row": 1, "actual": 1}
    response = client.post("/feedback", json={"feedback": [good, item]}, headers=AUTH)
    assert response.status_code == 422, response.text
    body = response.json()
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    assert body["errors"][0]["item"] == 1
    assert _stored(url, request_id) == {}


def test_malformed_feedback_bodies_are_422(binary: tuple[TestClient, str]) -> None:
    client, _ = binary
    refused = client.post("/predict", json={"rows": [{"bogus": 1}]})
    request_id = refused.headers["x-request-id"]
    cases = [
        (b"{not json", "not valid JSON"),
        (b'{"feedback": []}', "non-empty list"),
        (b'{"feedback": {"request_id": "x"}}', "non-empty list"),
        (b"[1, 2]", "expected an object"),
    ]
    for body, fragment in cases:
        response = client.post("/feedback", content=body, headers=AUTH)
        assert response.status_code == 422 and fragment in response.json()["detail"], (body, response.text)
    too_many = [{"request_id": "x", "actual": 1}] * (MAX_FEEDBACK_ITEMS + 1)
    response = client.post("/feedback", json={"feedback": too_many}, headers=AUTH)
    assert response.status_code == 422 and "too many items" in response.json()["detail"]
    response = client.post("/feedback", json={"request_id": request_id, "actual": 1}, headers=AUTH)
    assert response.status_code == 422 and "was refused (HTTP 422)" in response.json()["detail"]


def test_actuals_are_checked_against_the_version_that_answered(reg: Registry, tmp_path: Path) -> None:
    """A multiclass version answers, then a regressor takes over: the outcome of the first answer must still be
    one of the multiclass version's labels, and the regressor's a finite number."""
    multiclass = tm.log_and_register(reg, "fb_swap", "multiclass", "random_forest")
    regression = tm.log_and_register(reg, "fb_swap", "regression", "ridge", alias=None)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    with _app(reg, "fb_swap", url) as client:
        species = _predict(client, multiclass.rows(0, 2))
        assert species["model_version"] == multiclass.version
        reg.set_alias("fb_swap", regression.version)
        assert client.post("/reload", headers=AUTH).json()["version"] == regression.version
        numbers = _predict(client, regression.rows(0, 2))

        def post(request_id: str, actual: Any) -> Any:
            return client.post("/feedback", json={"request_id": request_id, "actual": actual}, headers=AUTH)

        label = species["classes"][1]
        assert post(species["request_id"], label).status_code == 200
        refused = post(species["request_id"], 3.5)
        assert refused.status_code == 422 and "is not one of the model's classes" in refused.json()["detail"]
        assert "'Iris setosa'" in refused.json()["detail"]
        assert post(numbers["request_id"], 151).status_code == 200
        as_text = post(numbers["request_id"], "151.0")
        assert as_text.status_code == 422 and "regressor: actual must be a number" in as_text.json()["detail"]
        nan = client.post(
            "/feedback", content=f'{{"request_id": "{numbers["request_id"]}", "actual": NaN}}', headers=AUTH
        )
        assert nan.status_code == 422 and "finite number" in nan.json()["detail"]
    assert _stored(url, species["request_id"]) == {0: label}
    assert _stored(url, numbers["request_id"]) == {0: 151.0}
