"""The ``model_monitoring`` DAG: its shape (hourly, retries, docs, failure emails, the retrain-request outlet), and
end to end with ``airflow dags test`` on the embedded stack: a real champion (churn data through the real ETL,
training and deploy), drifted live traffic answered by a real model server and logged into the prediction log's
tables. A degraded champion is emailed and emits exactly one ``retrain_request`` asset event, which queues an
``ml_pipeline`` run (the AssetDagRunQueue row the scheduler turns into a run); a second run inside the cool-down
emails again but emits none; too little traffic ends quietly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlpipeline.dev.localstack import LocalStack
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages.deploy import deploy
from mlpipeline.stages.train import train
from mlpipeline.stages.validate import ValidationDecision
from mlpipeline.storage import read_json, run_key
from mlpipeline_airflow.assets import RETRAIN_REQUEST
from mlpipeline_airflow.callbacks import notify_failure, notify_run_failure
from tests.conftest import mailbox_subjects, query
from tests.pipeline_data import Workspace
from tests.stages.live.support import HOUR, churn_rows, send_traffic

pytestmark = pytest.mark.airflow

DAG_ID = "model_monitoring"
MODEL = "monitoring_churn"
DAG_FILE = Path(__file__).parents[2] / "dags" / "model_monitoring.py"
TASKS = {"check_live_traffic", "route", "request_retrain", "alert", "end", "purge_prediction_log"}


@dataclass(frozen=True)
class Monitored:
    stack: LocalStack
    root: Path
    version: str

    def variables(self, log: str) -> dict[str, str]:
        """What the DAG reads besides the stack's Variables: the prediction log, its model, its own data dir."""
        return {
            "AIRFLOW_VAR_PREDICTION_LOG_URL": f"sqlite:///{self.root / log}",
            "AIRFLOW_VAR_REGISTERED_MODEL_NAME": MODEL,
            "AIRFLOW_VAR_DATA_DIR": str(self.root / "data"),
            "AIRFLOW_VAR_RETRAIN_COOLDOWN_HOURS": "24",
        }


def _airflow(stack: LocalStack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """An ``airflow`` command in the stack's environment, with room to import the DAG files on a loaded machine
    (Airflow gives a DAG file 30 s by default; two busy cores and scikit-learn, MLflow and matplotlib imports can
    take longer)."""
    full_env = {**stack.env(), "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600", **(env or {})}
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, *args], env=full_env, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def serialized(airflow_stack: LocalStack) -> LocalStack:
    """The DAGs serialised in the metadata DB (ml_pipeline's asset schedule is what queues a run on an event)."""
    result = _airflow(airflow_stack, "dags", "reserialize")
    assert result.returncode == 0, result.stderr[-3000:]
    return airflow_stack


@pytest.fixture(scope="module")
def monitored(serialized: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """A champion of its own in the stack's registry, deployed by the deploy stage (which binds its reference)."""
    airflow_stack = serialized
    root = tmp_path_factory.mktemp("monitoring")
    ws = Workspace(root=root, tracking_uri=airflow_stack.mlflow_uri)
    app = create_app(tracking_uri=ws.tracking_uri, model_name=MODEL, poll_seconds=0)
    with serve_in_thread(app) as url:
        config = ws.config(
            registered_model_name=MODEL, mlflow_experiment="model_monitoring_tests", serving_url=url,
            serving_timeout_seconds=60,
        )  # fmt: skip
        processed = ws.processed("monitoring-train", rows=3000, seed=7)
        candidate = train(config, run="monitoring-train", processed_data_path=processed.data_path, data_sha256="m")
        decision = ValidationDecision(
            deploy=True, metric="accuracy", candidate_score=candidate.metrics["accuracy"], threshold=None,
            champion_version=None, champion_score=None, candidate=candidate.candidate, task="binary",
        )  # fmt: skip
        result = deploy(config, run="monitoring-train", candidate=candidate, decision=decision)
        drifted, actual = churn_rows(600, 81, drift=True)
        send_traffic(f"sqlite:///{root / 'degraded.db'}", url, drifted, actual, start=time.time() - 4 * HOUR)
        few, few_actual = churn_rows(100, 82)
        send_traffic(f"sqlite:///{root / 'quiet.db'}", url, few, few_actual, start=time.time() - 2 * HOUR)
    yield Monitored(airflow_stack, root, result.version)


def _dags_test(monitored: Monitored, log: str) -> tuple[str, dict[str, str | None]]:
    """Run the DAG in-process with ``airflow dags test`` and the Variables of ``monitored``; (run id, task states)."""
    stack = monitored.stack
    before = {row[0] for row in query(stack, "SELECT run_id FROM dag_run WHERE dag_id = ?", DAG_ID)}
    _airflow(stack, "dags", "test", DAG_ID, env=monitored.variables(log))
    new = [
        row[0] for row in query(stack, "SELECT run_id FROM dag_run WHERE dag_id = ?", DAG_ID) if row[0] not in before
    ]
    assert len(new) == 1, new
    states = query(stack, "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, new[0])
    return new[0], dict(states)


def _retrain_events(stack: LocalStack) -> list[tuple[Any, ...]]:
    return query(
        stack,
        "SELECT e.source_dag_id, e.source_run_id, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.uri = ? ORDER BY e.id",
        RETRAIN_REQUEST.uri,
    )


def _queued_pipeline_runs(stack: LocalStack) -> list[tuple[Any, ...]]:
    return query(
        stack,
        "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id WHERE a.uri = ?",
        RETRAIN_REQUEST.uri,
    )


def _monitoring_mails(stack: LocalStack) -> list[str]:
    return [s for s in mailbox_subjects(stack) if s.startswith(f"[model_monitoring] {MODEL} ")]


def test_the_dag_is_hourly_with_retries_docs_failure_emails_and_the_retrain_outlet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models.dagbag import DagBag
    from airflow.sdk import TriggerRule

    monkeypatch.delenv("MODEL_MONITORING_SCHEDULE", raising=False)  # the default schedule
    monkeypatch.setenv("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "600")
    bag = DagBag(dag_folder=str(DAG_FILE), include_examples=False)
    assert bag.import_errors == {}
    dag = bag.dags[DAG_ID]
    assert dag.timetable.summary == "0 * * * *"  # @hourly
    assert (dag.max_active_runs, dag.catchup) == (1, False)
    assert dag.doc_md and "retrain_cooldown_hours" in dag.doc_md
    assert dag.on_failure_callback is notify_run_failure or notify_run_failure in dag.on_failure_callback
    assert {task.task_id for task in dag.tasks} == TASKS
    for task in dag.tasks:
        assert task.doc_md, task.task_id
        assert task.queue == "default" and task.retries >= 2, task.task_id
        assert notify_failure in task.on_failure_callback, task.task_id
    assert dag.get_task("request_retrain").outlets == [RETRAIN_REQUEST]
    assert dag.get_task("route").downstream_task_ids == {"request_retrain", "alert", "end"}
    assert dag.get_task("request_retrain").downstream_task_ids == {"alert"}
    assert dag.get_task("check_live_traffic").downstream_task_ids >= {"route", "purge_prediction_log"}
    assert dag.get_task("purge_prediction_log").trigger_rule == TriggerRule.ALL_DONE  # whatever the check found


def test_ml_pipeline_is_scheduled_on_the_retrain_request(serialized: LocalStack) -> None:
    rows = query(serialized, "SELECT data FROM serialized_dag WHERE dag_id = 'ml_pipeline'")
    timetable = json.loads(rows[0][0])["dag"]["timetable"]
    assert RETRAIN_REQUEST.uri in json.dumps(timetable)  # the stack sets ML_PIPELINE_SCHEDULE=none: the asset only
    assert query(serialized, "SELECT count(*) FROM serialized_dag WHERE dag_id = ?", DAG_ID) == [(1,)]


def test_degraded_traffic_alerts_and_requests_one_retrain_per_cooldown(monitored: Monitored) -> None:
    stack = monitored.stack
    assert _airflow(stack, "dags", "unpause", "ml_pipeline").returncode == 0  # events queue unpaused DAGs only
    try:
        events_before, mails_before = len(_retrain_events(stack)), len(_monitoring_mails(stack))
        run_id, states = _dags_test(monitored, "degraded.db")
        assert states == {task: "success" for task in TASKS}, states
        events = _retrain_events(stack)
        assert len(events) == events_before + 1
        source_dag, source_run, extra = events[-1]
        assert (source_dag, source_run) == (DAG_ID, run_id)
        extra = json.loads(extra)
        assert (extra["model_name"], extra["model_version"]) == (MODEL, monitored.version)
        assert "drift in numeric feature 'age'" in extra["reason"]
        assert read_json(extra["check"])["verdict"] == "degraded"
        assert _queued_pipeline_runs(stack) == [("ml_pipeline",)]
        mails = _monitoring_mails(stack)
        assert len(mails) == mails_before + 1 and mails[-1].startswith(
            f"[model_monitoring] {MODEL} v{monitored.version} degraded: "
        )
        state = read_json(monitored.root / "data" / "state" / "retrain_request.json")
        assert state["check_id"] == run_id

        # Within the cool-down: the alert again, but no second event.
        _, states = _dags_test(monitored, "degraded.db")
        assert states["request_retrain"] == "skipped"
        assert {task: states[task] for task in TASKS - {"request_retrain"}} == dict.fromkeys(
            TASKS - {"request_retrain"}, "success"
        )
        assert len(_retrain_events(stack)) == events_before + 1
        assert len(_monitoring_mails(stack)) == mails_before + 2
        assert read_json(monitored.root / "data" / "state" / "retrain_request.json")["check_id"] == run_id
    finally:
        _airflow(stack, "dags", "pause", "ml_pipeline")


def test_too_little_traffic_ends_quietly(monitored: Monitored) -> None:
    stack = monitored.stack
    events_before, mails_before = len(_retrain_events(stack)), len(_monitoring_mails(stack))
    run_id, states = _dags_test(monitored, "quiet.db")
    assert states["check_live_traffic"] == states["route"] == states["end"] == "success"
    assert states["request_retrain"] == states["alert"] == "skipped"
    assert states["purge_prediction_log"] == "success"
    assert len(_retrain_events(stack)) == events_before and len(_monitoring_mails(stack)) == mails_before
    record = read_json(monitored.root / "data" / "monitoring" / f"{run_key(run_id)}.json")
    assert record["verdict"] == "not_enough_traffic" and record["predictions"] == 100
