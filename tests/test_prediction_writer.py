"""The prediction log's writer process (src/mlpipeline/prediction_writer.py), driven through the server's side
(PredictionLog): records written from a script that never heard of ``if __name__ == "__main__"``, a writer killed
mid-traffic is replaced and what it held is counted, a writer never outlives its server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import func, select

from mlpipeline.prediction_store import engine_for, prediction_requests
from mlpipeline.serving.metrics import ServingMetrics
from mlpipeline.serving.prediction_log import LoggedRequest, PredictionLog
from tests.serving.test_prediction_log import _wait_for

SRC = Path(__file__).resolve().parent.parent / "src"


def _refusal(request_id: str) -> LoggedRequest:
    return LoggedRequest(request_id, time.time(), 1.0, 503, None, error="no model loaded")


def _stored_ids(url: str) -> set[str]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(select(prediction_requests.c.request_id)).scalars())
    finally:
        engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it waits for a parent that is gone (or for init to reap it).
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_a_killed_writer_is_replaced_and_what_it_held_is_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    metrics = ServingMetrics()
    log = PredictionLog(url, metrics=metrics)
    log.start()
    try:
        assert log.submit(_refusal("before"))
        assert log.wait_until_written(30)
        first = log._writer.process.pid
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: log._writer.process.pid != first, 30, "a new writer process")
        assert "exited with code -9" in (log.last_error or "")
        assert log.submit(_refusal("after"))
        assert log.wait_until_written(30)
        assert {"before", "after"} <= _stored_ids(url)
        assert not _alive(first)
    finally:
        log.close()
    assert metrics.prediction_log_written._value.get() + metrics.prediction_log_dropped._value.get() == 2
    assert log._writer is None


def test_the_writer_starts_from_an_unguarded_script_and_exits_with_its_server(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    # No __main__ guard: a multiprocessing "spawn" writer would re-run this script in the child and fail.
    script = textwrap.dedent(f"""
        import sys, time
        from mlpipeline.serving.metrics import ServingMetrics
        from mlpipeline.serving.prediction_log import LoggedRequest, PredictionLog
        log = PredictionLog({url!r}, metrics=ServingMetrics())
        log.start()
        log.submit(LoggedRequest("from-script", time.time(), 1.0, 503, None, error="x"))
        assert log.wait_until_written(30), "not written"
        print(log._writer.process.pid, flush=True)
        time.sleep(600)
    """)
    server = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        writer_pid = int(server.stdout.readline())
        assert _stored_ids(url) == {"from-script"}
        assert _alive(writer_pid)
        server.kill()  # no shutdown, no close(): the writer must notice on its own
        server.wait(10)
        _wait_for(lambda: not _alive(writer_pid), 30, "the writer to exit after its server died")
    finally:
        server.kill()
        server.stdout.close()


def test_stored_rows_count_is_what_was_submitted(tmp_path: Path) -> None:
    """Many small records across several send chunks and batches: each stored once, none lost on close."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(url, metrics=ServingMetrics(), batch_records=50, flush_seconds=0.05)
    log.start()
    for index in range(1_000):
        assert log.submit(_refusal(f"r{index}"))
    log.close(timeout=30)
    engine = engine_for(url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(prediction_requests)).scalar_one() == 1_000
    engine.dispose()
