"""What the Airflow UI shows about a healthy run is true: one deploying run of ``ml_pipeline`` (``airflow dags test``,
two candidates, an MLflow UI configured), then Airflow's own API server answers for it:

* the extra links — "MLflow run" on each ``train_model`` instance (its candidate's run), on ``validate_model`` and
  ``deploy_model`` (the chosen one's); "Report" on ``validate_model`` and the email tasks (the report in the MLflow
  UI's artifact view);
* the asset events of the raw snapshot, the processed data and the new champion, with their lineage extras;
* mapped instances labelled by candidate, every task documented;
* and no line of the run's log at ERROR level.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from mlpipeline.dev.localstack import AirflowClient, LocalStack, ManagedProcess, http_ok
from mlpipeline.storage import DataLayout, read_json, run_key
from mlpipeline_airflow.links import REPORT_ARTIFACT
from tests.conftest import query

pytestmark = pytest.mark.airflow

MLFLOW_UI = "http://mlflow.example:5000"  # links are only built, never followed: no server needed
CANDIDATES = [
    {"name": "stump", "ml_model_type": "hist_gradient_boosting", "hyperparameters": {"max_iter": 1, "max_depth": 1}},
    {"name": "forest", "ml_model_type": "random_forest", "hyperparameters": {"n_estimators": 20}},
]
# A random_state no other test uses: the data is the package's, the training is new, so the run trains and deploys.
CONF = {"accuracy_threshold": 0, "champion_tolerance": 1, "random_state": 4242, "candidates": CANDIDATES}
# structlog's console renderer ("[error    ]") and its JSON one ("level":"error"), at ERROR level or above.
ERROR_LINE = re.compile(r"\[(error|critical)\s*\]|\"level\":\s*\"(error|critical)\"", re.IGNORECASE)


@pytest.fixture(scope="module")
def healthy_run(airflow_stack: LocalStack) -> tuple[str, str]:
    """(run id, everything the run logged): tasks run in-process, their logs and Airflow's own on the console."""
    before = {row[0] for row in query(airflow_stack, "SELECT run_id FROM dag_run WHERE dag_id = 'ml_pipeline'")}
    airflow_stack.variables["mlflow_ui_url"] = MLFLOW_UI
    try:
        result = airflow_stack.airflow("dags", "test", "ml_pipeline", "-c", json.dumps(CONF), timeout=900, check=False)
    finally:
        del airflow_stack.variables["mlflow_ui_url"]
    runs = [row[0] for row in query(airflow_stack, "SELECT run_id FROM dag_run WHERE dag_id = 'ml_pipeline'")]
    [run_id] = [run for run in runs if run not in before]
    return run_id, result.stdout + result.stderr


@pytest.fixture(scope="module")
def api(airflow_stack: LocalStack, healthy_run: tuple[str, str]) -> Iterator[AirflowClient]:
    """Airflow's API server (what the UI reads) over the run's metadata DB; stopped after this module."""
    port = str(airflow_stack.ports.airflow_api)
    server = ManagedProcess(
        "api-server-ui-truth",
        [str(Path(sys.executable).parent / "airflow"), "api-server", "--port", port, "--workers", "1"],
        airflow_stack.env(),
        airflow_stack.logs / "api-server-ui-truth.log",
    ).start()
    try:
        server.wait_until(http_ok(f"{airflow_stack.api_url}/api/v2/monitor/health"), 300, "health check")
        yield AirflowClient(airflow_stack.api_url, "admin", airflow_stack.admin_password)
    finally:
        server.stop()


def _states(stack: LocalStack, run_id: str) -> dict[tuple[str, int], str]:
    rows = query(stack, "SELECT task_id, map_index, state FROM task_instance WHERE run_id = ?", run_id)
    return {(task, index): state for task, index, state in rows}


def _returned(stack: LocalStack, run_id: str, task_id: str, map_index: int = -1) -> Any:
    [(value,)] = query(
        stack,
        "SELECT x.value FROM xcom x JOIN dag_run d ON x.dag_run_id = d.id "
        "WHERE d.run_id = ? AND x.task_id = ? AND x.map_index = ? AND x.key = 'return_value'",
        run_id,
        task_id,
        str(map_index),
    )
    return json.loads(value)


def _links(api: AirflowClient, run_id: str, task_id: str, map_index: int = -1) -> dict[str, str | None]:
    path = f"/api/v2/dags/ml_pipeline/dagRuns/{run_id}/taskInstances/{task_id}/links?map_index={map_index}"
    return api.get(path)["extra_links"]


def test_the_run_deploys_with_mapped_instances_named_after_their_candidates(
    airflow_stack: LocalStack, healthy_run: tuple[str, str]
) -> None:
    run_id, _ = healthy_run
    states = _states(airflow_stack, run_id)
    assert states[("deploy_model", -1)] == states[("success_email", -1)] == states[("end", -1)] == "success", states
    rows = query(
        airflow_stack,
        "SELECT map_index, rendered_map_index FROM task_instance WHERE run_id = ? AND task_id = 'train_model' "
        "ORDER BY map_index",
        run_id,
    )
    assert rows == [(0, "stump"), (1, "forest")]


def test_no_line_of_a_healthy_runs_log_is_an_error(healthy_run: tuple[str, str]) -> None:
    _, output = healthy_run
    assert "[DAG TEST] end task task_id=success_email" in output  # the log is the run's, all of it
    errors = [line for line in output.splitlines() if ERROR_LINE.search(line)]
    assert errors == [], "\n".join(errors[:20])


def test_the_ui_links_each_task_to_its_mlflow_run_and_the_report(
    airflow_stack: LocalStack, healthy_run: tuple[str, str], api: AirflowClient
) -> None:
    run_id, _ = healthy_run
    mlflow = MlflowClient(tracking_uri=airflow_stack.mlflow_uri)

    def run_page(mlflow_run_id: str) -> str:
        experiment_id = mlflow.get_run(mlflow_run_id).info.experiment_id
        return f"{MLFLOW_UI}/#/experiments/{experiment_id}/runs/{mlflow_run_id}?workflowType=machine_learning"

    for index in (0, 1):
        trained = _returned(airflow_stack, run_id, "train_model", index)["train"]
        assert _links(api, run_id, "train_model", index) == {"MLflow run": run_page(trained["mlflow_run_id"])}

    chosen = _returned(airflow_stack, run_id, "validate_model")["train"]["mlflow_run_id"]
    report = f"{run_page(chosen).removesuffix('?workflowType=machine_learning')}/artifacts/{REPORT_ARTIFACT}"
    assert _links(api, run_id, "validate_model") == {"MLflow run": run_page(chosen), "Report": report}
    assert _links(api, run_id, "deploy_model") == {"MLflow run": run_page(chosen)}
    # After the email the report is either on the chosen run in MLflow, linked, or not there and not linked.
    logged = any(a.path == REPORT_ARTIFACT for a in mlflow.list_artifacts(chosen, "report"))
    assert _links(api, run_id, "success_email") == {"Report": report if logged else None}
    assert _links(api, run_id, "retrain_alert") == {"Report": None}  # skipped: no link rather than a wrong one
    assert _links(api, run_id, "crawl_data") == {}


def test_every_task_has_a_doc_in_the_ui(api: AirflowClient) -> None:
    tasks = api.get("/api/v2/dags/ml_pipeline/tasks")["tasks"]
    assert "train_model" in {t["task_id"] for t in tasks}
    assert {t["task_id"]: bool(t["doc_md"]) for t in tasks} == {t["task_id"]: True for t in tasks}


def test_asset_events_carry_the_runs_lineage(airflow_stack: LocalStack, healthy_run: tuple[str, str]) -> None:
    run_id, _ = healthy_run
    rows = query(
        airflow_stack,
        "SELECT a.name, e.source_task_id, e.extra FROM asset_event e JOIN asset a ON e.asset_id = a.id "
        "WHERE e.source_dag_id = 'ml_pipeline' AND e.source_run_id = ?",
        run_id,
    )
    events = {name: (task, json.loads(extra)) for name, task, extra in rows}
    assert {name: task for name, (task, _) in events.items()} == {
        "raw_snapshot": "crawl_data",
        "processed_data": "etl",
        "champion_model": "deploy_model",
    }
    assert all(len(json.dumps(extra)) < 1024 for _, extra in events.values())  # small: no data in them

    crawled = _returned(airflow_stack, run_id, "crawl_data")["crawl"]
    raw = events["raw_snapshot"][1]
    assert (raw["run"], raw["sha256"], raw["rows"], raw["path"]) == (
        run_key(run_id),
        crawled["sha256"],
        crawled["rows"],
        crawled["data_path"],
    )
    cleaned = events["processed_data"][1]
    etl = _returned(airflow_stack, run_id, "etl")["etl"]
    assert cleaned["sha256"] == raw["sha256"]  # the processed data comes from that snapshot
    assert cleaned["processed_sha256"] == etl["data_sha256"]
    assert (cleaned["rows"], cleaned["rows_quarantined"]) == (etl["rows_out"], etl["rows_quarantined"])

    champion = events["champion_model"][1]
    decision = read_json(DataLayout.of(airflow_stack.data_dir).run_records(run_key(run_id)) / "validate.json")
    alias = MlflowClient(registry_uri=airflow_stack.mlflow_uri, tracking_uri=airflow_stack.mlflow_uri)
    serving = alias.get_model_version_by_alias("churn_classifier", "champion")
    assert (champion["model_name"], champion["version"]) == ("churn_classifier", str(serving.version))
    assert (champion["metric"], champion["score"]) == ("accuracy", decision["candidate_score"])
    assert champion["candidate"] == decision["candidate"] and champion["sha256"] == raw["sha256"]
