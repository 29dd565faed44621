from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlpipeline.config import ConfigError, build_config
from mlpipeline.dev.mailcatcher import MailCatcher
from mlpipeline.storage import atomic_write_json
from mlpipeline_airflow.callbacks import failure_recipients, notify_failure, notify_run_failure, will_be_retried


@dataclass
class FakeTaskInstance:
    """The attributes of Airflow's task instance that the callback reads; ``start_record`` is the start task's XCom."""

    start_record: dict[str, Any] | None = None
    dag_id: str = "ml_pipeline"
    task_id: str = "etl"
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    try_number: int = 3
    max_tries: int = 2  # retries=2: tries 1 and 2 are followed by another
    map_index: int = -1
    state: str | None = None  # "failed" in the task's own process; unset in the DAG processor's callbacks
    log_url: str = "http://airflow/log?task_id=etl"
    pulled: list[str] = field(default_factory=list)

    def xcom_pull(self, task_ids: str) -> dict[str, Any] | None:
        self.pulled.append(task_ids)
        return self.start_record if task_ids == "start" else None


def _frozen_config(tmp_path: Path, **settings: str) -> dict[str, str]:
    """What the start task returns, with its config file written as start writes it."""
    path = tmp_path / "runs" / "run1" / "config.json"
    settings = {"data_dir": str(tmp_path / "data"), **settings}  # where the callback keeps its markers
    atomic_write_json(path, json.loads(build_config(settings).model_dump_json()))
    return {"config_path": str(path), "run": "run1"}


def test_emails_the_failure_to_the_runs_recipients(mail: MailCatcher, tmp_path: Path) -> None:
    ti = FakeTaskInstance(_frozen_config(tmp_path, notification_email="run@example.com", email_from="bot@example.com"))
    notify_failure({"ti": ti, "exception": ConfigError("accuracy_threshold: must be <= 1")})

    [message] = mail.messages()
    assert message["Subject"] == f"[ml_pipeline] FAILED: ml_pipeline.etl in run {ti.run_id}"
    assert (message["To"], message["From"]) == ("run@example.com", "bot@example.com")
    body = message.get_body(("html",)).get_content()
    assert "ConfigError: accuracy_threshold: must be &lt;= 1" in body
    assert ti.log_url in body
    assert ti.pulled == ["start"]


def test_the_failure_email_links_to_the_failed_task_instance(mail: MailCatcher, tmp_path: Path) -> None:
    ti = FakeTaskInstance(_frozen_config(tmp_path, airflow_ui_url="http://airflow.example:8080"), task_id="train_model")
    ti.map_index = 0  # the first mapped instance: index 0, not "unmapped"
    notify_failure({"ti": ti, "exception": ConfigError("bad")})

    [message] = mail.messages()
    body = message.get_body(("html",)).get_content()
    run = "http://airflow.example:8080/dags/ml_pipeline/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    assert f'<a href="{run}">Airflow run</a>' in body
    assert f'<a href="{run}/tasks/train_model/mapped/0">Airflow task</a>' in body


# Airflow 3.1's DAG processor calls on_failure_callback, with a stateless task instance, when a task stopped
# heartbeating (its worker died), whatever try it was; the task's own process calls it, with the task instance
# failed (and, except under `airflow dags test`, the exception), only for a final failure.


def test_a_heartbeat_timeout_that_will_be_retried_sends_nothing(mail: MailCatcher, tmp_path: Path) -> None:
    ti = FakeTaskInstance(_frozen_config(tmp_path), try_number=1)
    assert will_be_retried({"ti": ti})
    notify_failure({"ti": ti})
    assert mail.messages() == []
    # The retry then fails for good, in its own process: that is emailed.
    notify_failure({"ti": FakeTaskInstance(_frozen_config(tmp_path), try_number=2, state="failed")})
    assert [m["Subject"] for m in mail.messages()] == [f"[ml_pipeline] FAILED: ml_pipeline.etl in run {ti.run_id}"]


def test_a_heartbeat_timeout_on_the_last_try_is_emailed_once(mail: MailCatcher, tmp_path: Path) -> None:
    record = _frozen_config(tmp_path)
    last_try = {"ti": FakeTaskInstance(record, try_number=3)}
    assert not will_be_retried(last_try)
    notify_failure(last_try)  # on the heartbeat timeout
    notify_failure(last_try)  # again when the executor reports the try failed
    assert len(mail.messages()) == 1
    # Another task, or a mapped instance of this one, is another failure.
    notify_failure({"ti": FakeTaskInstance(record, try_number=3, map_index=1)})
    assert len(mail.messages()) == 2


@pytest.mark.parametrize("with_exception", [True, False], ids=["worker", "airflow dags test"])
def test_a_fail_fast_error_on_the_first_try_is_emailed(mail: MailCatcher, tmp_path: Path, with_exception: bool) -> None:
    """AirflowFailException ends the task on try 1 of 3: its own process reports it, failed."""
    context: dict[str, Any] = {"ti": FakeTaskInstance(_frozen_config(tmp_path), try_number=1, state="failed")}
    if with_exception:
        context["exception"] = ConfigError("bad")
    assert not will_be_retried(context)
    notify_failure(context)
    assert len(mail.messages()) == 1


def test_a_failed_rollback_says_the_alias_may_point_at_an_untested_version(mail: MailCatcher, tmp_path: Path) -> None:
    from mlpipeline.stages.deploy import RollbackError

    error = RollbackError("ROLLBACK FAILED (...): the 'champion' alias may still point at version 7, which did NOT")
    notify_failure({"ti": FakeTaskInstance(_frozen_config(tmp_path), task_id="deploy_model"), "exception": error})
    [message] = mail.messages()
    assert "RollbackError: ROLLBACK FAILED" in message.get_body(("html",)).get_content()
    assert "alias may still point at version 7" in message.get_body(("html",)).get_content()


def test_without_an_exception_the_email_points_at_the_log(mail: MailCatcher, tmp_path: Path) -> None:
    notify_failure({"ti": FakeTaskInstance(_frozen_config(tmp_path))})
    [message] = mail.messages()
    assert "unknown error (see the task log)" in message.get_body(("html",)).get_content()


def test_before_start_froze_a_config_the_variables_name_the_recipients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_NOTIFICATION_EMAIL", "oncall@example.com")
    monkeypatch.setenv("AIRFLOW_VAR_EMAIL_FROM", "not an address")  # invalid: ignored, not fatal
    config = failure_recipients({"ti": FakeTaskInstance(start_record=None)})
    assert config.notification_email == ["oncall@example.com"]
    assert config.email_from == build_config({}).email_from


def test_an_unreadable_frozen_config_falls_back_to_the_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_NOTIFICATION_EMAIL", "oncall@example.com")
    record = {"config_path": str(tmp_path / "gone.json"), "run": "run1"}
    assert failure_recipients({"ti": FakeTaskInstance(record)}).notification_email == ["oncall@example.com"]


def test_with_nothing_configured_the_defaults_receive_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_NOTIFICATION_EMAIL", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_EMAIL_FROM", raising=False)
    assert failure_recipients({"ti": FakeTaskInstance()}) == build_config({})


@pytest.mark.usefixtures("mail_server_down")
def test_never_raises_when_the_mail_server_is_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mlpipeline_airflow.callbacks"):
        notify_failure({"ti": FakeTaskInstance(_frozen_config(tmp_path)), "exception": RuntimeError("boom")})
    assert "could not send the failure email" in caplog.text
    assert any(record.exc_info and isinstance(record.exc_info[1], OSError) for record in caplog.records)


def _run_failure_context(run_id: str) -> dict[str, Any]:
    @dataclass
    class Dag:
        dag_id: str = "ml_pipeline"

    return {"dag": Dag(), "run_id": run_id, "reason": "task_failure"}


def test_a_failed_run_whose_task_failures_were_not_emailed_is_emailed(
    mail: MailCatcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # E.g. a task the scheduler failed after it sat in queued too long: reported like a try that will be retried.
    monkeypatch.setenv("AIRFLOW_VAR_DATA_DIR", str(tmp_path / "data"))
    stuck = FakeTaskInstance(_frozen_config(tmp_path), try_number=1)
    notify_failure({"ti": stuck})
    assert mail.messages() == []
    notify_run_failure(_run_failure_context("run1"))
    [message] = mail.messages()
    assert message["Subject"] == "[ml_pipeline] FAILED: ml_pipeline.(run) in run run1"
    assert "task_failure" in message.get_body(("html",)).get_content()
    notify_run_failure(_run_failure_context("run1"))  # reported again: still one email
    assert len(mail.messages()) == 1


def test_a_failed_run_whose_task_failure_was_emailed_is_not_emailed_again(
    mail: MailCatcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_DATA_DIR", str(tmp_path / "data"))
    notify_failure({"ti": FakeTaskInstance(_frozen_config(tmp_path)), "exception": RuntimeError("boom")})
    notify_run_failure(_run_failure_context("run1"))
    [message] = mail.messages()
    assert "ml_pipeline.etl" in message["Subject"]


def test_an_email_that_could_not_be_sent_is_tried_again_on_the_next_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlpipeline.dev.localstack import free_port
    from tests.mlpipeline_airflow.conftest import _point_smtp_default_at

    record = _frozen_config(tmp_path)
    _point_smtp_default_at(monkeypatch, free_port())  # down
    notify_failure({"ti": FakeTaskInstance(record)})
    with MailCatcher(tmp_path / "mail", port=free_port()) as catcher:
        _point_smtp_default_at(monkeypatch, catcher.port)
        notify_failure({"ti": FakeTaskInstance(record)})  # the DAG processor's second report of the same try
        assert len(catcher.messages()) == 1
