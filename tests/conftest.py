from __future__ import annotations

import os
import secrets as _secrets

# One OpenMP thread: on a busy 2-core machine spin-waiting threads make sklearn 10-20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The secrets a deployment gets from .env: fresh per test session, inherited by every process the tests start.
os.environ.setdefault("MLPIPELINE_MODEL_SIGNING_KEY", _secrets.token_hex(32))
os.environ.setdefault("MLPIPELINE_SERVING_TOKEN", _secrets.token_urlsafe(32))
# MLflow's telemetry thread cannot reach the internet here and races HTTP requests over os.environ.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from mlpipeline.dev.localstack import LocalStack
from tests import services


def pytest_report_header() -> str:
    return services.describe()


# Tests that share one running stack (a package- or module-scoped fixture) stay together on one worker under
# `pytest -n 2 --dist loadgroup` (make test): the stack starts once. They run first, longest first, so the other
# worker takes the quick tests meanwhile instead of waiting for a long stack at the end.
STACK_GROUPS = {
    "tests/test_demo.py": "demo",
    "tests/dags/": "airflow_stack",
    "tests/dev/": "process_stack",
    "tests/faults/": "faults",
}


def _stack_group(item: pytest.Item) -> str | None:
    path = Path(item.path).resolve().relative_to(Path(__file__).resolve().parent.parent).as_posix()
    return next((group for prefix, group in STACK_GROUPS.items() if path.startswith(prefix)), None)


def pytest_itemcollected(item: pytest.Item) -> None:
    # Marked as each test is collected: xdist reads the groups in its own collection_modifyitems hook.
    group = _stack_group(item)
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = list(STACK_GROUPS.values())
    items.sort(key=lambda item: order.index(group) if (group := _stack_group(item)) else len(order))


def dags_test(stack: LocalStack, conf: dict) -> tuple[str, dict[str, str | None]]:
    """Run ml_pipeline in-process with ``airflow dags test``; return (run id, task states).

    Its exit code says little (0 even when a middle task failed, 1 when the run failed), so callers assert
    on the task states instead.
    """
    before = {run["run_id"] for run in _runs(stack)}
    stack.airflow("dags", "test", "ml_pipeline", "-c", json.dumps(conf), timeout=600, check=False)
    new = [run for run in _runs(stack) if run["run_id"] not in before]
    assert len(new) == 1, new
    run_id = new[0]["run_id"]
    rows = query(stack, "SELECT task_id, state FROM task_instance WHERE dag_id = 'ml_pipeline' AND run_id = ?", run_id)
    return run_id, dict(rows)


def query(stack: LocalStack, sql: str, *args: str) -> list[tuple]:
    # Reading the metadata DB directly: each `airflow` CLI call costs ~5 s of start-up.
    with closing(sqlite3.connect(stack.airflow_home / "airflow.db")) as db:
        return db.execute(sql, args).fetchall()


def _runs(stack: LocalStack) -> list[dict]:
    return [{"run_id": row[0]} for row in query(stack, "SELECT run_id FROM dag_run WHERE dag_id = 'ml_pipeline'")]


def served_version(stack: LocalStack) -> str | None:
    response = httpx.get(f"{stack.serving_url}/model", timeout=10)
    return str(response.json()["version"]) if response.status_code == 200 else None


def mailbox_subjects(stack: LocalStack) -> list[str]:
    from mlpipeline.dev.mailcatcher import read_mailbox

    return [str(m["subject"]) for m in read_mailbox(stack.mail_dir)] if Path(stack.mail_dir).exists() else []
