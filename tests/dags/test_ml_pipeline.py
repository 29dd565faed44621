"""The DAG end to end with ``airflow dags test``, through both branches, against live local services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mlflow import MlflowClient

from mlpipeline.dev.localstack import LocalStack
from mlpipeline.storage import DataLayout, read_json, run_key
from tests.conftest import dags_test, mailbox_subjects, query, served_version

pytestmark = pytest.mark.airflow

DEPLOY_PATH = [
    "start",
    "crawl_data",
    "check_data",
    "data_changed",
    "etl",
    "train_model",
    "validate_model",
    "decide",
    "deploy_model",
    "monitor",
    "success_email",
    "end",
]


def _champion(stack: LocalStack) -> str | None:
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    try:
        return str(client.get_model_version_by_alias("churn_classifier", "champion").version)
    except Exception:
        return None


def _serialized_dag(stack: LocalStack) -> dict:
    """The DAG as the scheduler and the UI see it (written by ``dags reserialize`` in the fixture)."""
    rows = query(stack, "SELECT data FROM serialized_dag WHERE dag_id = 'ml_pipeline'")
    assert len(rows) == 1, rows
    return json.loads(rows[0][0])["dag"]


def test_dag_is_wired_as_designed(airflow_stack: LocalStack) -> None:
    output = airflow_stack.airflow("dags", "list-import-errors", "-o", "json").stdout
    assert "ml_pipeline" not in output
    tasks = airflow_stack.airflow("tasks", "list", "ml_pipeline").stdout.split()
    assert set(tasks) == {*DEPLOY_PATH, "list_candidates", "retrain_alert", "report_unchanged"}

    dag = _serialized_dag(airflow_stack)
    serialized = {t["__var"]["task_id"]: t["__var"] for t in dag["tasks"]}
    downstream = {task_id: set(t.get("downstream_task_ids", [])) for task_id, t in serialized.items()}
    assert downstream == {
        "start": {"crawl_data", "list_candidates"},
        "crawl_data": {"check_data"},
        # check_data's record is the argument of the branch and of both its ways.
        "check_data": {"data_changed", "etl", "report_unchanged"},
        "data_changed": {"etl", "report_unchanged"},
        "report_unchanged": {"end"},
        "list_candidates": {"train_model"},
        "etl": {"train_model"},
        "train_model": {"validate_model"},
        # validate_model's record is the argument of decide and of both branches.
        "validate_model": {"decide", "deploy_model", "retrain_alert"},
        "decide": {"deploy_model", "retrain_alert"},
        "deploy_model": {"monitor"},
        "monitor": {"success_email"},
        "success_email": {"end"},
        "retrain_alert": {"end"},
        "end": set(),
    }
    assert dag["edge_info"] == {
        "data_changed": {"etl": {"label": "changed"}, "report_unchanged": {"label": "unchanged"}},
        "decide": {"deploy_model": {"label": "deploy"}, "retrain_alert": {"label": "reject"}},
    }
    assert serialized["end"]["trigger_rule"] == "none_failed_min_one_success"
    # Every task has a doc in the UI (a mapped task keeps its own in partial_kwargs).
    docs = {task_id: t.get("doc_md") or t.get("partial_kwargs", {}).get("doc_md") for task_id, t in serialized.items()}
    assert all(docs.values()), docs


def test_threshold_zero_takes_the_deploy_path_and_serves_the_best_candidate(airflow_stack: LocalStack) -> None:
    candidates = [
        {
            "name": "stump",
            "ml_model_type": "hist_gradient_boosting",
            "hyperparameters": {"max_iter": 1, "max_depth": 1},
        },
        {"name": "forest", "ml_model_type": "random_forest", "hyperparameters": {"n_estimators": 20}},
        {"ml_model_type": "hist_gradient_boosting"},
    ]
    run_id, states = dags_test(airflow_stack, {"accuracy_threshold": 0, "candidates": candidates})
    assert {task: states[task] for task in DEPLOY_PATH} == dict.fromkeys(DEPLOY_PATH, "success")
    assert states["retrain_alert"] == states["report_unchanged"] == "skipped"
    # One mapped train_model instance per candidate, labelled with its name.
    mapped = query(
        airflow_stack,
        "SELECT map_index, rendered_map_index, state FROM task_instance "
        "WHERE dag_id = 'ml_pipeline' AND task_id = 'train_model' AND run_id = ? ORDER BY map_index",
        run_id,
    )
    assert mapped == [
        (0, "stump", "success"),
        (1, "forest", "success"),
        (2, "02_hist_gradient_boosting", "success"),
    ]
    decision = read_json(DataLayout.of(airflow_stack.data_dir).run_records(run_key(run_id)) / "validate.json")
    ranking = decision["ranking"]
    assert sorted(row["candidate"] for row in ranking) == ["02_hist_gradient_boosting", "forest", "stump"]
    assert [row["accuracy"] for row in ranking] == sorted((row["accuracy"] for row in ranking), reverse=True)
    assert decision["candidate"] == ranking[0]["candidate"] != "stump"
    # Only paths and small records travel through XCom; the data stays in files.
    sizes = query(
        airflow_stack,
        "SELECT x.task_id, length(x.value) FROM xcom x JOIN dag_run d ON x.dag_run_id = d.id WHERE d.run_id = ?",
        run_id,
    )
    assert sizes and max(size for _, size in sizes) < 16_384, sizes
    champion = _champion(airflow_stack)
    assert champion is not None
    assert served_version(airflow_stack) == champion
    assert any(
        s.startswith(f"[ml_pipeline] deployed churn_classifier v{champion}") for s in mailbox_subjects(airflow_stack)
    )


def test_threshold_out_of_reach_alerts_and_keeps_the_champion(airflow_stack: LocalStack) -> None:
    before = _champion(airflow_stack)
    if before is None:  # run alone: make a champion first so "unchanged" means something
        dags_test(airflow_stack, {"accuracy_threshold": 0})
        before = _champion(airflow_stack)
    _, states = dags_test(airflow_stack, {"accuracy_threshold": 1.0})
    for task in ("validate_model", "decide", "retrain_alert"):
        assert states[task] == "success", task
    assert states["end"] == "success"
    for task in ("deploy_model", "monitor", "success_email"):
        assert states[task] == "skipped", task
    assert _champion(airflow_stack) == before
    assert served_version(airflow_stack) == before
    assert any(s.startswith("[ml_pipeline] retrain needed") for s in mailbox_subjects(airflow_stack))


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        ({"accuracy_threshold": 7}, "metric_threshold 7.0 is outside what accuracy can be"),
        (
            {"task": "regression", "validation_metric": "accuracy"},
            "validation_metric 'accuracy' does not fit a regression task; metrics that fit: rmse, mae, r2",
        ),
    ],
    ids=["threshold-out-of-range", "metric-of-another-task"],
)
def test_invalid_config_fails_the_first_task_and_emails_the_failure(
    airflow_stack: LocalStack, conf: dict, reason: str
) -> None:
    from mlpipeline.dev.mailcatcher import read_mailbox

    _, states = dags_test(airflow_stack, conf)
    assert states["start"] == "failed"
    assert states["crawl_data"] == "upstream_failed"
    failures = [m for m in read_mailbox(airflow_stack.mail_dir) if "FAILED: ml_pipeline.start" in str(m["subject"])]
    assert any(reason in _text(message) for message in failures), reason


def _text(message: Any) -> str:
    """The decoded text of every part of an email (bodies may be quoted-printable or base64)."""
    return " ".join(
        str(part.get_content()) for part in message.walk() if part.get_content_maintype() == "text"
    ).replace("&#x27;", "'")


def _registered_versions(stack: LocalStack) -> set[str]:
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    return {str(v.version) for v in client.search_model_versions("name = 'churn_classifier'")}


def test_an_unchanged_source_trains_and_registers_nothing_the_second_time(airflow_stack: LocalStack) -> None:
    # A tolerance makes the first run's model the champion whatever earlier tests left; the second run is the same.
    conf = {"accuracy_threshold": 0, "champion_tolerance": 1}
    _, first = dags_test(airflow_stack, conf)
    assert first["deploy_model"] == "success" and first["report_unchanged"] == "skipped"
    champion, versions = _champion(airflow_stack), _registered_versions(airflow_stack)

    airflow_stack.variables["notify_unchanged"] = "true"
    try:
        run_id, second = dags_test(airflow_stack, conf)
    finally:
        del airflow_stack.variables["notify_unchanged"]
    for task in ("start", "crawl_data", "check_data", "data_changed", "report_unchanged", "end"):
        assert second[task] == "success", task
    for task in ("etl", "train_model", "validate_model", "decide", "deploy_model", "monitor", "success_email"):
        assert second[task] == "skipped", task
    assert second["retrain_alert"] == "skipped"
    assert _registered_versions(airflow_stack) == versions
    assert _champion(airflow_stack) == champion == served_version(airflow_stack)
    check = read_json(DataLayout.of(airflow_stack.data_dir).run_records(run_key(run_id)) / "data_check.json")
    assert check["unchanged"] is True and check["champion_version"] == champion
    assert f"[ml_pipeline] nothing new: champion v{champion} keeps serving" in mailbox_subjects(airflow_stack)
