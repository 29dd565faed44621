"""The tasks' extra links: built in the worker from the task's record, against a real MLflow tracking store; and
carried by the operator class, so that Airflow serialises them and a mapped task's instances have them too."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from mlpipeline.config import build_config
from mlpipeline.storage import atomic_write_json
from mlpipeline_airflow.links import REPORT_ARTIFACT, MlflowRunLink, ReportLink, with_links

UI = "http://mlflow.example:5000"


@dataclass
class RunningTaskInstance:
    """What ``task_runner.finalize`` hands ``get_link`` as ``ti_key``: the running task instance."""

    records: dict[tuple[str, int | None], Any]
    task_id: str = "train_model"
    map_index: int = -1
    state: str = "success"
    pulled: list[tuple[str, int | None]] = field(default_factory=list)

    def xcom_pull(self, task_ids: str, map_indexes: int | None = None) -> Any:
        self.pulled.append((task_ids, map_indexes))
        return self.records.get((task_ids, map_indexes))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tracking URI, experiment id) of a SQLite tracking store shared by the module (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri).create_experiment("links", artifact_location=str(root / "artifacts"))


@pytest.fixture
def mlflow_run(tracking: tuple[str, str]) -> tuple[str, str, str]:
    """(tracking URI, experiment id, run id) of a fresh real run."""
    uri, experiment_id = tracking
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id)
    client.set_terminated(run.info.run_id)
    return uri, experiment_id, run.info.run_id


def _record(tmp_path: Path, run_id: str, **settings: str) -> dict[str, Any]:
    path = tmp_path / "config.json"
    atomic_write_json(path, json.loads(build_config({"data_dir": str(tmp_path), **settings}).model_dump_json()))
    return {"config_path": str(path), "run": "run1", "train": {"mlflow_run_id": run_id, "candidate": "forest"}}


def test_mlflow_run_link_is_the_candidates_run_page(tmp_path: Path, mlflow_run: tuple[str, str, str]) -> None:
    uri, experiment_id, run_id = mlflow_run
    record = _record(tmp_path, run_id, mlflow_tracking_uri=uri, mlflow_ui_url=UI + "/")
    ti = RunningTaskInstance({("train_model", 2): record}, map_index=2)

    url = MlflowRunLink().get_link(None, ti_key=ti)  # type: ignore[arg-type]

    assert url == f"{UI}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert ti.pulled == [("train_model", 2)]  # a mapped instance reads its own record


def test_report_link_opens_the_artifact_view_once_the_report_is_logged(
    tmp_path: Path, mlflow_run: tuple[str, str, str]
) -> None:
    uri, experiment_id, run_id = mlflow_run
    record = _record(tmp_path, run_id, mlflow_tracking_uri=uri, mlflow_ui_url=UI)
    email = RunningTaskInstance({("validate_model", None): record}, task_id="success_email")
    expected = f"{UI}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{REPORT_ARTIFACT}"

    # validate_model links ahead of the report; a task after the report only to a report that is there.
    assert ReportLink(record_from="validate_model").get_link(None, ti_key=email) == expected  # type: ignore[arg-type]
    after_report = ReportLink(record_from="validate_model", require_logged=True)
    assert after_report.get_link(None, ti_key=email) == ""  # type: ignore[arg-type]

    report = tmp_path / "report.html"
    report.write_text("<html><body><img src='data:image/png;base64,iVBORw0KGgo='></body></html>")
    MlflowClient(tracking_uri=uri).log_artifact(run_id, str(report), "report")
    assert after_report.get_link(None, ti_key=email) == expected  # type: ignore[arg-type]
    assert email.pulled[-1] == ("validate_model", None)


def test_no_link_without_an_mlflow_ui(tmp_path: Path, mlflow_run: tuple[str, str, str]) -> None:
    uri, _, run_id = mlflow_run  # a sqlite tracking URI has no UI, and no mlflow_ui_url is set
    ti = RunningTaskInstance({("validate_model", -1): _record(tmp_path, run_id, mlflow_tracking_uri=uri)})
    ti.task_id = "validate_model"
    assert MlflowRunLink().get_link(None, ti_key=ti) == ""  # type: ignore[arg-type]
    assert ReportLink().get_link(None, ti_key=ti) == ""  # type: ignore[arg-type]


def test_a_failed_try_gets_no_link_and_pulls_nothing(tmp_path: Path, mlflow_run: tuple[str, str, str]) -> None:
    uri, _, run_id = mlflow_run
    record = _record(tmp_path, run_id, mlflow_tracking_uri=uri, mlflow_ui_url=UI)
    ti = RunningTaskInstance({("train_model", -1): record}, state="failed")
    assert MlflowRunLink().get_link(None, ti_key=ti) == ""  # type: ignore[arg-type]
    assert ti.pulled == []  # pulling a missing return value would log "XCom not found" as an ERROR


def test_a_link_that_cannot_be_built_is_empty_and_says_why(
    tmp_path: Path, mlflow_run: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, run_id = mlflow_run
    broken = {"config_path": str(tmp_path / "missing.json"), "train": {"mlflow_run_id": run_id}}
    ti = RunningTaskInstance({("deploy_model", -1): broken}, task_id="deploy_model")
    assert MlflowRunLink().get_link(None, ti_key=ti) == ""  # type: ignore[arg-type]
    # A warning, not an exception: finalize would log an exception of get_link at ERROR level.
    assert [r.levelname for r in caplog.records if "link" in r.getMessage()] == ["WARNING"]
    not_a_record = RunningTaskInstance({("success_email", -1): "subject"}, task_id="success_email")
    assert ReportLink().get_link(None, ti_key=not_a_record) == ""  # type: ignore[arg-type]


def test_an_unknown_run_falls_back_to_mlflows_own_redirect(tmp_path: Path, mlflow_run: tuple[str, str, str]) -> None:
    uri, _, _ = mlflow_run
    record = _record(tmp_path, "0" * 32, mlflow_tracking_uri=uri, mlflow_ui_url=UI)
    ti = RunningTaskInstance({("validate_model", -1): record}, task_id="validate_model")
    assert MlflowRunLink().get_link(None, ti_key=ti) == f"{UI}/#/runs/{'0' * 32}?workflowType=machine_learning"  # type: ignore[arg-type]
    assert ReportLink().get_link(None, ti_key=ti) == ""  # type: ignore[arg-type]  # its route needs the experiment


def test_links_are_serialised_for_plain_and_mapped_tasks_and_kept_when_unmapped() -> None:
    from airflow.sdk import dag, task
    from airflow.serialization.serialized_objects import SerializedDAG

    @task
    def train(candidate: str) -> str:
        return candidate

    @task
    def judge(results: list[str]) -> str:
        return results[0]

    linked_train = with_links(train.override(doc_md="trains"), MlflowRunLink())
    linked_judge = with_links(judge, MlflowRunLink(), ReportLink())

    @dag(dag_id="links_test", schedule=None, start_date=datetime(2026, 1, 1))
    def links_test() -> None:
        linked_judge(linked_train.expand(candidate=["a", "b"]))

    built = links_test()
    serialized = {t["__var"]["task_id"]: t["__var"] for t in SerializedDAG.to_dict(built)["dag"]["tasks"]}
    assert serialized["train"]["_operator_extra_links"] == {"MLflow run": "_link_MlflowRunLink"}
    assert serialized["judge"]["_operator_extra_links"] == {
        "MLflow run": "_link_MlflowRunLink",
        "Report": "_link_ReportLink",
    }
    assert serialized["train"]["partial_kwargs"]["doc_md"] == "trains"  # override()'s settings survive
    assert serialized["judge"]["_operator_name"] == "@task"  # the UI still calls it a TaskFlow task
    # The worker runs a mapped task as a fresh instance of its operator class: the class carries the links.
    mapped = built.get_task("train")
    unmapped = mapped.unmap({"op_kwargs": {"candidate": "a"}})
    assert [link.name for link in unmapped.operator_extra_links] == ["MLflow run"]
