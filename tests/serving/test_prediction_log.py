"""The prediction log: every /predict answer (and refusal) is written off the request path with the version that
answered it, across hot swaps; a database that goes away costs log records (counted), never an answer.

SQLite files in tmp dirs, and one real PostgreSQL database created for the test (tests/services.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from mlpipeline.prediction_store import engine_for, feedback, prediction_requests, predictions
from mlpipeline.serving import ServerSettings, ServerThread, create_app
from tests import model_factory as mf
from tests import services
from tests.model_factory import LoggedModel, Registry


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


def _metric(app: FastAPI, name: str, **labels: str) -> float:
    text = generate_latest(app.state.server.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"metric {name} {labels} not exposed")


def _written(app: FastAPI) -> float:
    return _metric(app, "mlpipeline_serving_prediction_log_written_total")


def _dropped(app: FastAPI) -> float:
    return _metric(app, "mlpipeline_serving_prediction_log_dropped_total")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['MLPIPELINE_SERVING_TOKEN']}"}


class Hammer:
    """Threads posting /predict in a loop; every answer (status, header id, body) is kept."""

    def __init__(self, url: str, rows: list[dict[str, Any]], threads: int = 2) -> None:
        self.url = url
        self.rows = rows
        self.answers: list[tuple[int, str | None, dict[str, Any]]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    response = http.post("/predict", json={"rows": self.rows})
                except httpx.HTTPError as exc:  # a failure to answer counts as much as a wrong status
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                self.answers.append((response.status_code, response.headers.get("x-request-id"), response.json()))

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _logged(url: str) -> tuple[dict[str, Any], dict[tuple[str, int], Any]]:
    """(prediction_requests by id, predictions by (id, row)) as stored."""
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            requests = {row.request_id: row for row in connection.execute(select(prediction_requests))}
            rows = {(row.request_id, row.row_index): row for row in connection.execute(select(predictions))}
    finally:
        engine.dispose()
    return requests, rows


def _assert_answers_logged(url: str, answers: list[tuple[int, str | None, dict[str, Any]]], sent: list[dict]) -> None:
    """Every answered request is logged with the version its answer names, its rows as sent and its answers."""
    requests, rows = _logged(url)
    for status, request_id, body in answers:
        assert status == 200 and body["request_id"] == request_id
        logged = requests[request_id]
        assert (logged.model_name, logged.model_version) == (body["model_name"], body["model_version"])
        assert logged.status_code == 200 and logged.rows == len(sent) and logged.latency_ms > 0
        assert logged.task == "binary" and logged.classes == [0, 1]
        for index, row in enumerate(sent):
            stored = rows[(request_id, index)]
            assert stored.model_version == body["model_version"]
            assert stored.features == row
            assert stored.prediction == body["predictions"][index]
            np.testing.assert_allclose(stored.probabilities, body["probabilities"][index], rtol=0, atol=0)


def test_answers_are_logged_with_the_version_that_gave_them_across_hot_swaps(reg: Registry, tmp_path: Path) -> None:
    v1 = reg.register(reg.base(0), "plog_swap")
    v2 = reg.register(reg.base(1), "plog_swap", alias=None)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    rows = mf.rows_for_request(mf.make_frame(4, seed=31))
    rows[1]["monthly_charges"] = None  # logged as sent
    app = create_app(tracking_uri=reg.tracking_uri, model_name="plog_swap", poll_seconds=0, prediction_log_url=url)
    with (
        ServerThread(app) as server,
        Hammer(server.url, rows) as hammer,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        for version in [v2.version, v1.version, v2.version]:
            reg.set_alias("plog_swap", version)
            assert http.post("/reload", headers=_auth()).json()["version"] == version
            time.sleep(0.1)
        refused = http.post("/predict", json={"rows": [{"bogus": 1}]})
    # The server is stopped: its shutdown flushed the queue.
    assert not hammer.failures, hammer.failures[:3]
    assert len(hammer.answers) > 10
    assert {body["model_version"] for _, _, body in hammer.answers} == {v1.version, v2.version}
    _assert_answers_logged(url, hammer.answers, rows)

    requests, _ = _logged(url)
    assert refused.status_code == 422 and "request_id" not in refused.json()
    logged_refusal = requests[refused.headers["x-request-id"]]
    assert logged_refusal.status_code == 422 and "unknown column(s) ['bogus']" in logged_refusal.error
    assert logged_refusal.rows == 0 and logged_refusal.model_version == v2.version
    assert len(requests) == len(hammer.answers) + 1
    assert _written(app) == len(requests) and _dropped(app) == 0
    predicted = sum(body["predictions"].count(1) for _, _, body in hammer.answers)
    assert _metric(app, "mlpipeline_serving_predicted_labels_total", label="1") == predicted


def test_no_model_and_sampling(reg: Registry, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    row = mf.rows_for_request(mf.make_frame(1, seed=32))
    # No champion: the 503 is logged, with no version.
    app = create_app(tracking_uri=reg.tracking_uri, model_name="plog_none", poll_seconds=0, prediction_log_url=url)
    with TestClient(app) as client:
        refused = client.post("/predict", json={"rows": row})
        assert refused.status_code == 503
    logged = _logged(url)[0][refused.headers["x-request-id"]]
    assert (logged.status_code, logged.model_version, logged.task) == (503, None, None)
    assert "no model loaded" in logged.error

    # Sample 0: answers carry the id in the header only, and nothing is written.
    reg.register(reg.base(0), "plog_sampled")
    unsampled = f"sqlite:///{tmp_path / 'unsampled.db'}"
    app = create_app(
        tracking_uri=reg.tracking_uri,
        model_name="plog_sampled",
        poll_seconds=0,
        prediction_log_url=unsampled,
        prediction_log_sample=0.0,
    )
    with TestClient(app) as client:
        for _ in range(5):
            response = client.post("/predict", json={"rows": row})
            assert response.status_code == 200 and "request_id" not in response.json()
            assert len(response.headers["x-request-id"]) == 32
    assert _logged(unsampled) == ({}, {})  # the tables exist (created at start), empty
    assert _written(app) == 0


def test_sqlite_directory_deleted_under_load_loses_no_answer(reg: Registry, tmp_path: Path) -> None:
    reg.register(reg.base(0), "plog_sqlite_gone")
    directory = tmp_path / "log"
    directory.mkdir()
    url = f"sqlite:///{directory / 'log.db'}"
    rows = mf.rows_for_request(mf.make_frame(2, seed=33))
    app = create_app(
        tracking_uri=reg.tracking_uri,
        model_name="plog_sqlite_gone",
        poll_seconds=0,
        prediction_log_url=url,
        prediction_log_buffer=100,
    )
    with ServerThread(app) as server, Hammer(server.url, rows) as hammer:
        _wait_for(lambda: _written(app) > 0, 30, "the first records to be written")
        shutil.rmtree(directory)  # the database file and its directory are gone
        _wait_for(lambda: _dropped(app) > 0, 60, "records to be dropped")
        directory.mkdir()  # back (empty): the writer re-creates the tables and writes again
        written = _written(app)
        _wait_for(lambda: _written(app) > written, 60, "writing to resume")
        answered_meanwhile = len(hammer.answers)
    assert not hammer.failures, hammer.failures[:3]
    assert answered_meanwhile > 0
    requests, _ = _logged(url)
    assert requests and all(r.status_code == 200 for r in requests.values())
    answered = {request_id for _, request_id, _ in hammer.answers}
    assert set(requests) <= answered
    # An answer names its request id in the body only when it was queued for the log (not dropped at once).
    assert any("request_id" not in body for _, _, body in hammer.answers)
    assert _written(app) + _dropped(app) == len(hammer.answers)  # every record written or counted as dropped


def test_a_database_down_at_start_delays_nothing_and_is_retried(reg: Registry, tmp_path: Path) -> None:
    reg.register(reg.base(0), "plog_down_at_start")
    directory = tmp_path / "not-yet"
    url = f"sqlite:///{directory / 'log.db'}"  # its directory does not exist: the database cannot be opened
    rows = mf.rows_for_request(mf.make_frame(1, seed=35))
    app = create_app(
        tracking_uri=reg.tracking_uri, model_name="plog_down_at_start", poll_seconds=0, prediction_log_url=url
    )
    with TestClient(app) as client:
        first = client.post("/predict", json={"rows": rows})
        assert first.status_code == 200 and "request_id" in first.json()
        # It tries (in its own process, started with the app) and says why it could not.
        _wait_for(lambda: app.state.prediction_log.last_error is not None, 30, "the writer to report its error")
        directory.mkdir()
        _wait_for(lambda: _written(app) >= 1, 60, "the tables to be created and the first answer written")
        second = client.post("/predict", json={"rows": rows})
    requests, logged_rows = _logged(url)
    assert set(requests) == {first.json()["request_id"], second.json()["request_id"]}
    assert logged_rows[(first.json()["request_id"], 0)].features == rows[0]


def _pg_url(pg: services.PostgresTarget, database: str) -> str:
    return f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{database}"


@contextlib.contextmanager
def _renamed(pg: services.PostgresTarget, database: str) -> Iterator[None]:
    """The database is gone for the duration of the block: its sessions killed and the name moved away."""
    admin = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="postgres")
    admin.autocommit = True

    def rename(source: str, target: str) -> None:
        # The writer reconnects at once: kill its sessions until a rename gets in between.
        for _ in range(100):
            with admin.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (source,))
                try:
                    cursor.execute(f'ALTER DATABASE "{source}" RENAME TO "{target}"')
                    return
                except psycopg2.errors.ObjectInUse:
                    time.sleep(0.02)
        raise AssertionError(f"could not rename database {source}")

    try:
        rename(database, f"{database}_gone")
        yield
    finally:
        rename(f"{database}_gone", database)
        admin.close()


def test_postgres_going_away_under_load_loses_no_answer_and_takes_feedback(reg: Registry) -> None:
    served: LoggedModel = reg.register(reg.base(0), "plog_postgres")
    rows = mf.rows_for_request(mf.make_frame(3, seed=34))
    with services.postgres_server() as pg, services.databases(pg, "predlog") as (database,):
        url = _pg_url(pg, database)
        app = create_app(
            tracking_uri=reg.tracking_uri,
            model_name="plog_postgres",
            poll_seconds=0,
            prediction_log_url=url,
            prediction_log_buffer=100,
        )
        with ServerThread(app) as server:
            with Hammer(server.url, rows) as hammer:
                _wait_for(lambda: _written(app) > 0, 30, "the first records to be written")
                with _renamed(pg, database):
                    _wait_for(lambda: _dropped(app) > 0, 60, "records to be dropped")
                written = _written(app)
                _wait_for(lambda: _written(app) > written, 60, "writing to resume")
            depth = "mlpipeline_serving_prediction_log_queue_depth"
            _wait_for(lambda: _metric(app, depth) == 0, 30, "the queue to drain")
            with httpx.Client(base_url=server.url, timeout=30, headers=_auth()) as http:
                # At once: the prediction may still be queued, /feedback waits for the writer.
                answer = http.post("/predict", json={"rows": rows}).json()
                actual = [1 - p for p in answer["predictions"]]
                items = [{"request_id": answer["request_id"], "row": i, "actual": a} for i, a in enumerate(actual)]
                stored = http.post("/feedback", json={"feedback": items})
                assert stored.status_code == 200, stored.text
                again = http.post("/feedback", json={"request_id": answer["request_id"], "actual": actual[0]})
                assert again.json() == {"stored": 1}  # a retry replaces, does not duplicate
        assert not hammer.failures, hammer.failures[:3]
        assert _written(app) + _dropped(app) == len(hammer.answers) + 1
        requests, _ = _logged(url)
        _assert_answers_logged(url, [a for a in hammer.answers if a[1] in requests], rows)
        assert requests[answer["request_id"]].model_version == served.version
        engine = engine_for(url)
        with engine.connect() as connection:
            outcomes = connection.execute(select(feedback).where(feedback.c.request_id == answer["request_id"]))
            assert sorted((row.row_index, row.actual) for row in outcomes) == list(enumerate(actual))
        engine.dispose()


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("MLPIPELINE_PREDICTION_LOG_SAMPLE", "1.5", "between 0 and 1"),
        ("MLPIPELINE_PREDICTION_LOG_SAMPLE", "half", "between 0 and 1"),
        ("MLPIPELINE_PREDICTION_LOG_BUFFER", "0", "at least 1"),
    ],
)
def test_prediction_log_settings_are_checked(name: str, value: str, fragment: str) -> None:
    environ = {"MLFLOW_TRACKING_URI": "sqlite:///unused.db", name: value}
    with pytest.raises(ValueError, match=name) as raised:
        ServerSettings.from_env(environ)
    assert fragment in str(raised.value)
    settings = ServerSettings.from_env({"MLFLOW_TRACKING_URI": "sqlite:///unused.db"})
    assert (settings.prediction_log_url, settings.prediction_log_sample, settings.prediction_log_buffer) == (
        None,
        1.0,
        10_000,
    )
    assert "secret" not in repr(ServerSettings("x", prediction_log_url="postgresql://u:secret@h/db"))
