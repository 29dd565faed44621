"""The DAG-integrity check many teams run in CI, in-process and without services: every DAG file imports, and
every task is fit to run unattended (retries for transient failures, a doc, an alert on its final failure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
# A worker, Redis or MLflow restart costs a try: two more keep the run alive (errors a retry would only repeat
# fail at once through fail_fast_on, whatever the count).
MIN_RETRIES = 2


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False)


def _tasks(dagbag: Any) -> list[tuple[str, Any]]:
    return [(f"{dag_id}.{task.task_id}", task) for dag_id, dag in dagbag.dags.items() for task in dag.tasks]


def _runs_code(task: Any) -> bool:
    """An EmptyOperator only joins branches: it has nothing that could fail, transiently or not."""
    from airflow.providers.standard.operators.empty import EmptyOperator

    return not isinstance(task, EmptyOperator)


def test_every_dag_file_imports_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert "ml_pipeline" in dagbag.dags


def test_every_task_that_runs_code_retries_at_least_twice(dagbag: Any) -> None:
    too_few = {name: task.retries for name, task in _tasks(dagbag) if _runs_code(task) and task.retries < MIN_RETRIES}
    assert too_few == {}


def test_every_task_and_dag_has_a_doc(dagbag: Any) -> None:
    assert [dag_id for dag_id, dag in dagbag.dags.items() if not dag.doc_md] == []
    assert [name for name, task in _tasks(dagbag) if not (task.doc_md or task.doc)] == []


def test_every_task_alerts_on_its_final_failure(dagbag: Any) -> None:
    assert [name for name, task in _tasks(dagbag) if _runs_code(task) and not task.on_failure_callback] == []


def test_ml_pipeline_runs_one_at_a_time_and_deploys_one_at_a_time(dagbag: Any) -> None:
    dag = dagbag.dags["ml_pipeline"]
    assert dag.max_active_runs == 1  # compose and README carry the same default
    assert dag.get_task("deploy_model").pool == "deploy"
    assert dag.get_task("train_model").pool == "training"
