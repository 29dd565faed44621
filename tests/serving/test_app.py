"""The model server over HTTP against a real (temporary) MLflow registry: loading, validation, swaps, metrics,
processes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlpipeline.serving import ServerThread, app_from_env, create_app
from tests import model_factory as mf
from tests.model_factory import FEATURES, LoggedModel, Registry


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module", autouse=True)
def cli_server(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    """``python -m mlpipeline.serving`` as a real process, started first so its slow imports overlap other tests.

    It runs in an empty directory: the models must load without tests/ being importable.
    """
    workdir = tmp_path_factory.mktemp("cli")
    log = workdir / "server.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": reg.tracking_uri,
        "MLPIPELINE_MODEL_NAME": "serving_cli",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlpipeline.serving",
                "--port",
                "0",
                "--poll-seconds",
                "0.3",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def main_model(reg: Registry) -> LoggedModel:
    return reg.register(reg.base(0), "serving_main")


@pytest.fixture(scope="module")
def client(reg: Registry, main_model: LoggedModel) -> Iterator[TestClient]:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_main", poll_seconds=0)
    with TestClient(app) as test_client:
        yield test_client


def _auth() -> dict[str, str]:
    # tests/conftest.py puts a per-session token in the environment, as .env does in a deployment.
    return {"Authorization": f"Bearer {os.environ['MLPIPELINE_SERVING_TOKEN']}"}


def _offline(model: Any, frame: pd.DataFrame) -> tuple[list[Any], np.ndarray]:
    return model.predict(frame[FEATURES]).tolist(), model.predict_proba(frame[FEATURES])[:, 1]


def _assert_matches(body: dict[str, Any], logged: LoggedModel, frame: pd.DataFrame) -> None:
    labels, probabilities = _offline(logged.model, frame)
    assert body["model_version"] == logged.version
    assert body["predictions"] == labels
    np.testing.assert_allclose(body["probabilities"], probabilities, rtol=0, atol=1e-12)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"metric {name} {labels} not exposed")


# ---------------------------------------------------------------------------------------------------------------
# The app with a model.
# ---------------------------------------------------------------------------------------------------------------


def test_predict_one_row_matches_offline_model(client: TestClient, main_model: LoggedModel) -> None:
    frame = mf.make_frame(1, seed=11)
    response = client.post("/predict", json={"rows": mf.rows_for_request(frame)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "serving_main"
    assert set(body) == {"model_name", "model_version", "predictions", "probabilities", "classes"}
    assert body["classes"] == [0, 1]  # binary: the probabilities are those of the last, positive class
    _assert_matches(body, main_model, frame)


def test_predict_many_rows_with_missing_values_matches_offline_model(
    client: TestClient, main_model: LoggedModel
) -> None:
    frame = mf.make_frame(300, seed=12)
    rows = mf.rows_for_request(frame)
    # Nulls in every kind of column: the model imputes them, exactly as it would offline.
    offline = frame[FEATURES].copy()
    offline["paperless_billing"] = offline["paperless_billing"].astype("float64")
    offline["contract"] = offline["contract"].astype(object)
    for i, column in zip(range(0, 300, 7), FEATURES * 10, strict=False):
        rows[i][column] = None
        offline.loc[i, column] = pd.NaT if column == "signup_date" else np.nan
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 300
    _assert_matches(body, main_model, offline)
    # Labels are the classes the model was trained with, probabilities are P(positive class).
    assert set(body["predictions"]) <= {0, 1}
    assert all(0.0 <= p <= 1.0 for p in body["probabilities"])


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda r: r.pop("region"), ["row 1", "missing column(s) ['region']"]),
        (lambda r: r.update(tenure_months="twelve"), ["row 1, column 'tenure_months'", "expected a number"]),
        (lambda r: r.update(signup_date="31/12/2020"), ["row 1, column 'signup_date'", "ISO 8601"]),
        (lambda r: r.update(customer_id=7), ["row 1", "unknown column(s) ['customer_id']"]),
    ],
    ids=["missing-column", "bad-number", "bad-date", "extra-column"],
)
def test_predict_rejects_bad_input_with_422(
    client: TestClient, change: Callable[[dict], Any], fragments: list[str]
) -> None:
    rows = mf.rows_for_request(mf.make_frame(2, seed=13))
    change(rows[1])
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 422
    body = response.json()
    for fragment in fragments:
        assert fragment in body["detail"]
    assert body["errors"][0]["row"] == 1


def test_predict_rejects_malformed_and_oversized_requests(client: TestClient) -> None:
    assert client.post("/predict", content=b"{not json").status_code == 422
    assert "rows" in client.post("/predict", json={"row": {}}).json()["detail"]
    assert client.post("/predict", json={"rows": []}).status_code == 422
    row = mf.rows_for_request(mf.make_frame(1, seed=14))[0]
    too_many = client.post("/predict", json={"rows": [row] * 10_001})
    assert too_many.status_code == 413
    assert "10001 > 10000" in too_many.json()["detail"]


def test_model_endpoint_reports_registry_metadata(client: TestClient, main_model: LoggedModel) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "serving_main" and body["version"] == main_model.version
    assert body["alias"] == "champion"
    assert body["run_id"] == main_model.run_id
    assert body["metrics"] == pytest.approx(main_model.metrics)
    assert body["trained_at"] == main_model.trained_at
    assert body["data_fingerprint"] == main_model.data_sha256
    types = {c["name"]: c["type"] for c in body["input_schema"]}
    assert types == {
        "tenure_months": "long",
        "support_tickets": "long",
        "monthly_charges": "double",
        "contract": "string",
        "region": "string",
        "paperless_billing": "boolean",
        "signup_date": "datetime",
    }
    assert body["loaded_at"] and body["last_error"] is None
    assert body["task"] == "binary" and body["classes"] == [0, 1] and body["positive_class"] == 1
    # The test factory's pipeline one-hot encodes into sparse matrices: served by sklearn, and /model says why.
    assert body["fast_path"]["active"] is False
    assert "OneHotEncoder with sparse_output=True" in body["fast_path"]["reason"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_version"] == main_model.version


def test_metrics_endpoint_exposes_counters(client: TestClient, main_model: LoggedModel) -> None:
    rows = mf.rows_for_request(mf.make_frame(3, seed=15))
    assert client.post("/predict", json={"rows": rows}).status_code == 200
    assert client.post("/predict", json={"rows": [{"bogus": 1}]}).status_code == 422
    text = client.get("/metrics").text
    assert _metric(text, "mlpipeline_serving_requests_total", endpoint="/predict", status="200") >= 1
    assert _metric(text, "mlpipeline_serving_requests_total", endpoint="/predict", status="422") >= 1
    assert _metric(text, "mlpipeline_serving_request_latency_seconds_count", endpoint="/predict") >= 2
    assert _metric(text, "mlpipeline_serving_predictions_total") >= 3
    assert _metric(text, "mlpipeline_serving_model_version") == float(main_model.version)
    assert _metric(text, "mlpipeline_serving_model_reloads_total") >= 1
    assert _metric(text, "mlpipeline_serving_model_reload_failures_total") == 0
    assert _metric(text, "mlpipeline_serving_fast_path_active") == 0  # see test_model_endpoint_reports_...


# ---------------------------------------------------------------------------------------------------------------
# Model lifecycle.
# ---------------------------------------------------------------------------------------------------------------


def test_no_champion_serves_503_until_one_is_promoted(reg: Registry) -> None:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_empty", poll_seconds=0)
    row = mf.rows_for_request(mf.make_frame(1, seed=16))
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "no_model"
        assert client.get("/model").status_code == 503
        assert client.get("/model").json()["fast_path"] == {"active": False, "reason": "no model is loaded"}
        assert client.post("/predict", json={"rows": row}).status_code == 503
        assert client.post("/reload", headers=_auth()).status_code == 503
        logged = reg.register(reg.base(0), "serving_empty")
        reloaded = client.post("/reload", headers=_auth())
        assert reloaded.status_code == 200 and reloaded.json()["version"] == logged.version
        assert client.post("/predict", json={"rows": row}).status_code == 200


def test_reload_swaps_versions_and_a_broken_version_keeps_the_old_model(reg: Registry) -> None:
    v1 = reg.register(reg.base(0), "serving_swap")
    v2 = reg.register(reg.base(1), "serving_swap", alias=None)
    frame = mf.make_frame(200, seed=17)
    rows = mf.rows_for_request(frame)
    assert _offline(v1.model, frame)[1].tolist() != _offline(v2.model, frame)[1].tolist()
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_swap", poll_seconds=0)
    with TestClient(app) as client:
        _assert_matches(client.post("/predict", json={"rows": rows}).json(), v1, frame)

        reg.set_alias("serving_swap", v2.version)
        reloaded = client.post("/reload", headers=_auth())
        assert reloaded.status_code == 200 and reloaded.json()["version"] == v2.version
        _assert_matches(client.post("/predict", json={"rows": rows}).json(), v2, frame)

        # A version whose artifacts are gone cannot load: the old model keeps serving, health says degraded.
        broken = reg.log_model("serving_swap", seed=3, alias=None, rows=200)
        reg.break_version(broken)
        reg.set_alias("serving_swap", broken.version)
        failed = client.post("/reload", headers=_auth())
        assert failed.status_code == 503
        assert failed.json()["version"] == v2.version
        assert f"version {broken.version} failed" in failed.json()["last_error"]
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["model_version"] == v2.version
        _assert_matches(client.post("/predict", json={"rows": rows}).json(), v2, frame)
        text = client.get("/metrics").text
        assert _metric(text, "mlpipeline_serving_model_reload_failures_total") >= 1
        assert _metric(text, "mlpipeline_serving_model_version") == float(v2.version)

        # Pointing the alias back at a good version clears the error.
        reg.set_alias("serving_swap", v1.version)
        assert client.post("/reload", headers=_auth()).json()["version"] == v1.version
        assert client.get("/health").json()["status"] == "ok"


def test_labels_come_from_predict_when_it_is_not_the_argmax(reg: Registry) -> None:
    # A tuned decision threshold: predict() differs from argmax(predict_proba()); the server must follow predict().
    logged = reg.log_model("serving_threshold", seed=4, threshold=0.3, rows=400)
    frame = mf.make_frame(300, seed=21)
    labels, probabilities = _offline(logged.model, frame)
    assert labels != (probabilities > 0.5).astype(int).tolist()  # the case is real for these rows
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_threshold", poll_seconds=0)
    with TestClient(app) as client:
        response = client.post("/predict", json={"rows": mf.rows_for_request(frame)})
        assert response.status_code == 200, response.text
        _assert_matches(response.json(), logged, frame)


def test_poller_follows_the_alias_without_reload(reg: Registry) -> None:
    v1 = reg.register(reg.base(0), "serving_poll")
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_poll", poll_seconds=0.1)
    with TestClient(app) as client:

        def served() -> str | None:
            return client.get("/health").json()["model_version"]

        assert served() == v1.version
        v2 = reg.register(reg.base(1), "serving_poll")
        _wait_for(lambda: served() == v2.version, 20, "the poller to load version 2")
        frame = mf.make_frame(20, seed=18)
        _assert_matches(client.post("/predict", json={"rows": mf.rows_for_request(frame)}).json(), v2, frame)
        # Removing the alias (e.g. a deploy rolled back the first champion) takes the model out of service.
        reg.client.delete_registered_model_alias("serving_poll", "champion")
        _wait_for(lambda: client.get("/health").status_code == 503, 20, "the model to be unloaded")


def test_concurrent_predictions_during_swaps_all_succeed(reg: Registry) -> None:
    """A real uvicorn server; clients hammer /predict while the model is swapped back and forth."""
    v1 = reg.register(reg.base(0), "serving_concurrent")
    v2 = reg.register(reg.base(1), "serving_concurrent", alias=None)
    frame = mf.make_frame(8, seed=19)
    rows = mf.rows_for_request(frame)
    expected = {v.version: _offline(v.model, frame) for v in (v1, v2)}
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_concurrent", poll_seconds=0)
    results: list[tuple[int, Any]] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                response = http.post("/predict", json={"rows": rows})
                results.append((response.status_code, response.json()))

    with ServerThread(app) as server:
        workers = [threading.Thread(target=hammer, args=(server.url,)) for _ in range(3)]
        for worker in workers:
            worker.start()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for version in [v2.version, v1.version] * 2:
                reg.set_alias("serving_concurrent", version)
                assert http.post("/reload", headers=_auth()).json()["version"] == version
                time.sleep(0.05)
        stop.set()
        for worker in workers:
            worker.join(30)

    assert len(results) > 20
    assert [status for status, _ in results].count(200) == len(results), [b for s, b in results if s != 200][:3]
    seen = {body["model_version"] for _, body in results}
    assert seen == {v1.version, v2.version}
    for _, body in results:
        # Every answer is wholly from the version it names: no mixed or half-swapped state.
        labels, probabilities = expected[body["model_version"]]
        assert body["predictions"] == labels
        np.testing.assert_allclose(body["probabilities"], probabilities, atol=1e-12)


def test_app_from_env_requires_a_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError, match="MLFLOW_TRACKING_URI"):
        app_from_env()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    monkeypatch.setenv("MLPIPELINE_POLL_SECONDS", "soon")
    with pytest.raises(ValueError, match="MLPIPELINE_POLL_SECONDS"):
        app_from_env()


def test_cli_process_starts_without_a_model_and_picks_one_up(reg: Registry, cli_server: subprocess.Popen[str]) -> None:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in cli_server.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=90)
    except queue.Empty:
        pytest.fail("the server process printed nothing within 90 s")
    assert first.startswith("serving http://127.0.0.1:"), first
    url = first.split()[1]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").status_code == 503  # nothing registered under serving_cli yet
        logged = reg.register(reg.base(0), "serving_cli")
        _wait_for(lambda: http.get("/health").status_code == 200, 30, "the CLI server's poller to load the model")
        frame = mf.make_frame(5, seed=20)
        response = http.post("/predict", json={"rows": mf.rows_for_request(frame)})
        assert response.status_code == 200, response.text
        _assert_matches(response.json(), logged, frame)
        assert "mlpipeline_serving_requests_total" in http.get("/metrics").text
        # Regression guard: without TCP_NODELAY on accepted sockets every answer waits ~40 ms (Nagle + delayed
        # ACK); /health itself takes about a millisecond.
        timings = []
        for _ in range(15):
            started = time.perf_counter()
            http.get("/health")
            timings.append(time.perf_counter() - started)
        assert float(np.median(timings)) < 0.03, timings
