"""Attacks on the model server: each asserts the refusal AND that nothing changed (served version, reloads, memory,
the server still answering).

Anonymous or wrongly authenticated reloads, reloads with no token configured, forced reloads in a loop, oversized
bodies (declared and chunked), deep JSON nesting, error bodies amplifying the request, health that lies.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlpipeline.serving import DEFAULT_MAX_BODY_BYTES, ServerSettings, ServerThread, create_app
from tests import model_factory as mf
from tests.model_factory import LoggedModel, Registry

MiB = 1024 * 1024
T = TypeVar("T")


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module")
def served(reg: Registry) -> LoggedModel:
    return reg.register(reg.base(0), "serving_security")


@pytest.fixture(scope="module")
def server_url(served: LoggedModel, reg: Registry) -> Iterator[str]:
    """A real uvicorn server (the wire behaviour matters: early 413s, chunked bodies, no connection resets)."""
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_security", poll_seconds=0)
    with ServerThread(app) as server:
        yield server.url


def _token() -> str:
    return os.environ["MLPIPELINE_SERVING_TOKEN"]  # set per test session by tests/conftest.py


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _rows(n: int, seed: int = 40) -> list[dict[str, Any]]:
    return mf.rows_for_request(mf.make_frame(n, seed=seed))


def _served_version(client: TestClient | httpx.Client) -> str | None:
    return client.get("/model").json()["version"]


def _metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _with_peak_rss_growth(action: Callable[[], T]) -> tuple[T, int]:
    """Run ``action``; return its result and how far this process's peak RSS rose above the RSS before it."""
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    result = action()
    return result, (_proc_status_kib("VmHWM") - before) * 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _big_predict_body(total_bytes: int) -> tuple[int, Iterator[bytes]]:
    """A valid ``{"rows": [...]}`` body of at least ``total_bytes``, streamed in 1 MiB chunks (held once)."""
    row = json.dumps(_rows(1)[0]).encode()
    chunk = (row + b",") * (MiB // (len(row) + 1))
    count = -(-total_bytes // len(chunk))
    head, tail = b'{"rows":[', row + b"]}"

    def pieces() -> Iterator[bytes]:
        yield head
        for _ in range(count):
            yield chunk
        yield tail

    return len(head) + count * len(chunk) + len(tail), pieces()


# ---------------------------------------------------------------------------------------------------------------
# Authentication of POST /reload.
# ---------------------------------------------------------------------------------------------------------------


def test_reload_needs_the_bearer_token_and_refusals_change_nothing(reg: Registry) -> None:
    v1 = reg.register(reg.base(0), "serving_auth")
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_auth", poll_seconds=0)
    with TestClient(app) as client:
        v2 = reg.register(reg.base(1), "serving_auth")  # the alias moved: a reload would swap to v2
        for headers in (
            {},
            _bearer("wrong-token"),
            {"Authorization": _token()},
            {"Authorization": "Basic " + _token()},
        ):
            refused = client.post("/reload?force=true", headers=headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert _token() not in refused.text
            assert _served_version(client) == v1.version
        assert _metric(client, "mlpipeline_serving_model_reloads_total") == 1  # only the start-up load
        accepted = client.post("/reload", headers=_bearer(_token()))
        assert accepted.status_code == 200 and accepted.json()["version"] == v2.version
        assert _served_version(client) == v2.version


def test_reload_is_disabled_when_no_token_is_configured_and_polling_still_works(reg: Registry) -> None:
    v1 = reg.register(reg.base(0), "serving_no_token")
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_no_token", poll_seconds=0.2, serving_token="")
    with TestClient(app) as client:
        refused = client.post("/reload", headers=_bearer(_token()))
        assert refused.status_code == 403
        assert "POST /reload is disabled: MLPIPELINE_SERVING_TOKEN is not set" in refused.json()["detail"]
        assert client.post("/reload", headers={"Authorization": "Bearer "}).status_code == 403
        assert _served_version(client) == v1.version
        v2 = reg.register(reg.base(1), "serving_no_token")
        deadline = time.monotonic() + 20
        while _served_version(client) != v2.version:  # the alias poller does not need the token
            assert time.monotonic() < deadline, "the poller did not pick up version 2"
            time.sleep(0.05)


def test_the_token_comes_from_the_environment_and_never_shows_in_a_repr() -> None:
    env = {"MLFLOW_TRACKING_URI": "sqlite:///unused.db", "MLPIPELINE_SERVING_TOKEN": " s3cret-token "}
    settings = ServerSettings.from_env(env)
    assert settings.serving_token == "s3cret-token"
    assert "s3cret" not in repr(settings)
    assert ServerSettings.from_env({**env, "MLPIPELINE_SERVING_TOKEN": "  "}).serving_token is None
    assert ServerSettings.from_env({"MLFLOW_TRACKING_URI": "sqlite:///unused.db"}).serving_token is None
    limits = ServerSettings.from_env({**env, "MLPIPELINE_MAX_BODY_BYTES": "1000", "MLPIPELINE_MAX_ROWS": "5"})
    assert (limits.max_body_bytes, limits.max_rows) == (1000, 5)
    assert ServerSettings.from_env(env).max_body_bytes == DEFAULT_MAX_BODY_BYTES
    for name, raw in [("MLPIPELINE_MAX_BODY_BYTES", "4MB"), ("MLPIPELINE_MAX_ROWS", "0")]:
        with pytest.raises(ValueError, match=name):
            ServerSettings.from_env({**env, name: raw})


def test_forced_reloads_are_rate_limited(reg: Registry) -> None:
    reg.register(reg.base(0), "serving_force")
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_force", poll_seconds=0, force_reload_seconds=60)
    with TestClient(app) as client:
        assert client.post("/reload?force=true", headers=_bearer(_token())).status_code == 200
        assert _metric(client, "mlpipeline_serving_model_reloads_total") == 2
        again = client.post("/reload?force=true", headers=_bearer(_token()))
        assert again.status_code == 429, again.text
        assert 1 <= int(again.headers["Retry-After"]) <= 60
        assert _metric(client, "mlpipeline_serving_model_reloads_total") == 2  # nothing was downloaded
        # An ordinary reload (what deploy sends) is not limited: it only reads the alias.
        assert client.post("/reload", headers=_bearer(_token())).status_code == 200


def test_invalid_query_parameters_get_a_bounded_error(served: LoggedModel, reg: Registry) -> None:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_security", poll_seconds=0)
    with TestClient(app) as client:
        response = client.post("/reload", params={"force": "x" * 20_000}, headers=_bearer(_token()))
        assert response.status_code == 422
        assert len(response.content) <= 4096 and "invalid request" in response.json()["detail"]


# ---------------------------------------------------------------------------------------------------------------
# Request bodies over the wire.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_50_mib_body_is_refused_with_413_without_being_read(
    server_url: str, served: LoggedModel, declared: bool
) -> None:
    size, pieces = _big_predict_body(50 * MiB)
    headers = {"Content-Length": str(size)} if declared else {}  # without it httpx sends it chunked
    with httpx.Client(base_url=server_url, timeout=60) as http:
        assert http.get("/health").status_code == 200  # warm the connection: only the body is measured below
        started = time.monotonic()
        response, growth = _with_peak_rss_growth(lambda: http.post("/predict", content=pieces, headers=headers))
        elapsed = time.monotonic() - started
        assert response.status_code == 413, response.text[:300]
        assert "request body too large" in response.json()["detail"]
        assert elapsed < 15, elapsed
        # Buffering and parsing it took >1 GiB once; now the server keeps at most the limit (chunked) in memory.
        assert growth < 16 * MiB, f"peak RSS rose by {growth / MiB:.0f} MiB"
        # The same connection still works and the model still answers.
        after = http.post("/predict", json={"rows": _rows(2)})
        assert after.status_code == 200 and after.json()["model_version"] == served.version


def test_deeply_nested_json_is_a_clear_422_not_a_reset_or_500(server_url: str) -> None:
    deep = 100_000
    bodies = {
        "bare": b"[" * deep + b"]" * deep,
        "as rows": b'{"rows":' + b"[" * deep + b"]" * deep + b"}",
        "in a value": b'{"rows":[{"tenure_months":' + b"[" * 900 + b"]" * 900 + b"}]}",
    }
    with httpx.Client(base_url=server_url, timeout=60) as http:
        for what, body in bodies.items():
            response = http.post("/predict", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (what, response.text[:300])
            assert response.json()["detail"], what
            assert len(response.content) <= 4096, what
        assert "nested too deeply" in http.post("/predict", content=bodies["bare"]).json()["detail"]
        assert http.post("/predict", json={"rows": _rows(1)}).status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# Rows, columns and the size of error bodies.
# ---------------------------------------------------------------------------------------------------------------


def test_too_many_rows_are_refused_before_validation(served: LoggedModel, reg: Registry) -> None:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_security", poll_seconds=0, max_rows=5)
    with TestClient(app) as client:
        response = client.post("/predict", json={"rows": [{"bogus": 1}] * 6})
        assert response.status_code == 413 and "6 > 5" in response.json()["detail"]
        assert client.post("/predict", json={"rows": _rows(5)}).status_code == 200


def test_huge_unknown_column_payload_gets_a_small_error_body(served: LoggedModel, reg: Registry) -> None:
    # The probe of issue 11: 7.6 MB of unknown columns once came back as an 11.6 MB error.
    app = create_app(
        tracking_uri=reg.tracking_uri, model_name="serving_security", poll_seconds=0, max_body_bytes=16 * MiB
    )
    row = _rows(1)[0]
    junk = {f"column_{i:07d}_{'x' * 40}": "v" * 20 for i in range(4000)}
    body = json.dumps({"rows": [{**row, **junk}] * 25}).encode()
    assert len(body) > 7 * MiB
    with TestClient(app) as client:
        response = client.post("/predict", content=body)
        assert response.status_code == 422
        assert len(response.content) <= 4096, len(response.content)
        detail = response.json()["detail"]
        assert "unknown column(s)" in detail and "and 3995 more" in detail
        assert response.json()["error_count"] == 25
        assert client.post("/predict", json={"rows": _rows(2)}).status_code == 200


def test_huge_values_are_quoted_clipped(served: LoggedModel, reg: Registry) -> None:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_security", poll_seconds=0)
    rows = _rows(30)
    for row in rows:
        row["tenure_months"] = "9" * 20_000 + "z"
        row["contract"] = {"nested": ["x" * 100] * 10}
    with TestClient(app) as client:
        response = client.post("/predict", json={"rows": rows})
        assert response.status_code == 422
        assert len(response.content) <= 4096, len(response.content)
        body = response.json()
        assert body["error_count"] == 60 and body["errors"]
        assert "expected a string, got dict of 1 item(s)" in body["detail"]


# ---------------------------------------------------------------------------------------------------------------
# Health that tells the truth.
# ---------------------------------------------------------------------------------------------------------------


def test_health_fails_without_a_model_and_live_does_not(reg: Registry) -> None:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="serving_health", poll_seconds=0)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        assert client.get("/live").status_code == 200
        reg.register(reg.base(0), "serving_health")
        assert client.post("/reload", headers=_bearer(_token())).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/live").status_code == 200
