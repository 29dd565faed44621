"""The ``ml_maintenance`` DAG: it imports cleanly, is shaped as the peer checks expect (daily, retries, docs, the
failure callback), and its task applies retention with the settings from Variables, protecting the runs Airflow
says are active. Runs in-process (no ``airflow dags test``: the policy itself is tested in tests/stages)."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Airflow: it creates its home (logs/) on import, and ~/airflow is nobody's to litter.
_AIRFLOW_HOME = tempfile.TemporaryDirectory(prefix="mlpipeline-maintenance-tests-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME.name)

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from airflow.models.dagbag import DagBag  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from mlpipeline.storage import read_json  # noqa: E402
from mlpipeline_airflow.callbacks import notify_failure  # noqa: E402

DAG_FILE = Path(__file__).parents[2] / "dags" / "ml_maintenance.py"
DAY = 86400.0


@pytest.fixture(scope="module")
def dag() -> Any:
    bag = DagBag(dag_folder=str(DAG_FILE), include_examples=False)
    assert bag.import_errors == {}
    return bag.dags["ml_maintenance"]


def test_the_dag_is_daily_on_the_default_queue_with_retries_docs_and_failure_emails(dag: Any) -> None:
    assert dag.timetable.summary == "0 0 * * *"  # @daily
    assert (dag.max_active_runs, dag.catchup) == (1, False)
    assert dag.params["dry_run"] is False
    assert dag.doc_md and "retention_runs" in dag.doc_md
    assert [t.task_id for t in dag.tasks] == ["apply_retention"]
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.queue == "default"
        assert task.doc_md, task.task_id
        assert notify_failure in task.on_failure_callback


@dataclass
class FakeTaskInstance:
    """What the task asks Airflow: how many ml_pipeline runs are queued or running."""

    active: int
    asked: list[tuple[str, list[str]]] = field(default_factory=list)

    def get_dr_count(self, dag_id: str, states: list[str]) -> int:
        self.asked.append((dag_id, states))
        return self.active


def _make_runs(data: Path, registry: MlflowClient, days: int) -> list[str]:
    """``days`` old pipeline runs on disk, each with a registered version; the first one is the champion."""
    runs = []
    registry.create_registered_model("churn_classifier")
    experiment = registry.create_experiment("maintenance")
    for day in range(days):
        run = f"scheduled__day_{day}"
        stamp = time.time() - (10 - day) * DAY
        for area in ("raw", "processed", "models", "runs"):
            (data / area / run).mkdir(parents=True)
            (data / area / run / "file").write_bytes(b"x" * 100)
            os.utime(data / area / run / "file", (stamp, stamp))
            os.utime(data / area / run, (stamp, stamp))
        mlflow_run = registry.create_run(experiment, tags={"pipeline_run": run}).info.run_id
        version = registry.create_model_version(
            "churn_classifier", f"runs:/{mlflow_run}/model", mlflow_run, tags={"pipeline_run": run}
        ).version
        if day == 0:
            registry.set_registered_model_alias("churn_classifier", "champion", version)
        runs.append(run)
    return runs


def _run_task(
    dag: Any, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], ti: FakeTaskInstance, dry_run: bool
) -> dict[str, Any]:
    """Call the task's function as Airflow would, with Variables and the context faked at the module's seams."""
    function: Callable[[], dict[str, Any]] = dag.get_task("apply_retention").python_callable
    context = {"ti": ti, "params": {"dry_run": dry_run}}
    monkeypatch.setitem(function.__globals__, "get_current_context", lambda: context)
    monkeypatch.setitem(function.__globals__, "optional_variable", variables.get)
    return function()


def test_the_task_applies_retention_from_variables_and_spares_active_runs(
    dag: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = _make_runs(tmp_path / "data", MlflowClient(tracking_uri=uri, registry_uri=uri), days=4)
    variables = {
        "data_dir": str(tmp_path / "data"),
        "mlflow_tracking_uri": uri,
        "retention_runs": "1",
        "retention_registry_versions": "1",
        "retention_grace_hours": "1",
    }
    ti = FakeTaskInstance(active=2)

    preview = _run_task(dag, monkeypatch, variables, ti, dry_run=True)
    assert (preview["dry_run"], preview["deleted_runs"], preview["deleted_versions"]) == (True, 1, ["2"])
    assert all((tmp_path / "data" / "raw" / run).exists() for run in runs)

    summary = _run_task(dag, monkeypatch, variables, ti, dry_run=False)
    assert ti.asked[-1] == ("ml_pipeline", ["queued", "running"])
    # Day 3 is the newest (kept), day 2 is active (Airflow counts 2 runs), day 0 is the champion: day 1 goes.
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == [runs[0], runs[2], runs[3]]
    assert (summary["deleted_runs"], summary["deleted_versions"], summary["bytes_freed"]) == (1, ["2"], 400)
    record = read_json(summary["record_path"])
    assert record["deleted_runs"] == [runs[1]] and record["dry_run"] is False
    assert "active" in record["protected_runs"][runs[2]]
