"""``on_failure_callback``: email a task's final failure to the run's recipients, whatever the task; once.

Airflow 3.1 calls ``on_failure_callback`` from two places (``airflow.sdk.execution_time.task_runner.finalize`` and
``airflow.dag_processing.processor._execute_task_callbacks``):

* the task's own process (or ``airflow dags test``), after a try failed with no retry left (a try that will be
  retried gets ``on_retry_callback`` instead): its task instance is ``failed`` already;
* the DAG processor, on the scheduler's behalf, when a task stopped heartbeating (its worker died) or its process
  ended without reporting: for ANY try, retry pending or not, with a task instance without state (the request
  carries none) and no ``exception``. The scheduler then fails the try and retries it if
  ``try_number <= max_tries``; and for a heartbeat timeout it asks twice (once on the timeout, once when the
  executor reports the try failed).

So: no email when a retry follows (the task may well succeed), and one email per failed try.

The scheduler can also fail a task without a retry, e.g. one stuck in ``queued`` too often (no worker serves its
queue), and report it like a heartbeat timeout: the task callback cannot tell it from a try that will be retried.
``notify_run_failure``, the DAGs' own ``on_failure_callback``, catches that: when the run fails and none of its
task failures was emailed, it emails the run's failure with the scheduler's reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from mlpipeline.config import ConfigError, PipelineConfig, build_config, read_config
from mlpipeline.stages import notify
from mlpipeline.storage import DataLayout, run_key
from mlpipeline_airflow.failures import last_failure
from mlpipeline_airflow.notifications import send_email
from mlpipeline_airflow.variables import optional_variable

log = logging.getLogger(__name__)

# The DAG's first task: its record names the run's frozen config (``{"config_path": ..., "run": ...}``).
CONFIG_TASK_ID = "start"
# The only settings a failure email needs (who gets it, and the UIs it links to); read one by one so one bad
# Variable cannot silence the rest.
RECIPIENT_SETTINGS = ("notification_email", "email_from", "airflow_ui_url", "mlflow_ui_url")
# Under runs/<run>/: one marker per failed try that was emailed.
ALERTS_DIR = "alerts"


def notify_failure(context: dict[str, Any]) -> None:
    """Email a final failure, once. Never raises: a broken mail server must not hide the task's own error."""
    ti = context["ti"]
    if will_be_retried(context):
        log.info("try %s of %s failed and will be retried: no email", ti.try_number, ti.max_tries + 1)
        return
    record = ti.xcom_pull(task_ids=CONFIG_TASK_ID)
    marker = _claim(_alerts_dir(record, ti.run_id), f"{ti.task_id}.{getattr(ti, 'map_index', -1)}.{ti.try_number}")
    if marker is False:
        log.info("this failure was emailed already")
        return
    error = context.get("exception") or last_failure(ti)
    email = notify.failure_email(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        dag_run=ti.run_id,
        try_number=getattr(ti, "try_number", None),
        error=f"{type(error).__name__}: {error}" if error else "unknown error (see the task log)",
        log_url=getattr(ti, "log_url", None),
    )
    config = _recipients(record)
    map_index = getattr(ti, "map_index", None)
    task_links = notify.run_links(
        config,
        dag_id=ti.dag_id,
        airflow_run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=-1 if map_index is None else map_index,  # not `or -1`: index 0 is a mapped instance
    )
    _send_or_release(config, notify.with_links(email, task_links), marker)


def notify_run_failure(context: dict[str, Any]) -> None:
    """The DAG's ``on_failure_callback``: email a failed run whose task failures were not emailed (see the module's
    doc). Never raises."""
    dag_run = context.get("dag_run")
    run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or "?"
    if not run_id:
        log.warning("a run failed, but the callback was not told which")
        return
    alerts = _alerts_dir(None, run_id)
    if alerts is not None and alerts.is_dir() and any(alerts.iterdir()):
        return  # a task's final failure was emailed already
    marker = _claim(alerts, "run")
    if marker is False:
        return
    reason = context.get("reason") or "see the run's task logs"
    email = notify.failure_email(
        dag_id=dag_id, task_id="(run)", dag_run=run_id, try_number=None, error=str(reason), log_url=None
    )
    config = _recipients(None)
    _send_or_release(
        config, notify.with_links(email, notify.run_links(config, dag_id=dag_id, airflow_run_id=run_id)), marker
    )


def will_be_retried(context: dict[str, Any]) -> bool:
    """Whether Airflow runs the task again after this failure (see the module's doc for who calls when)."""
    ti = context["ti"]
    if getattr(ti, "state", None) == "failed" or "exception" in context:
        return False  # the task's own process: it calls on_failure_callback for a final failure only
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    # As TaskInstance.is_eligible_to_retry decides it for the scheduler.
    return try_number is not None and max_tries is not None and try_number <= max_tries


def _alerts_dir(record: dict[str, Any] | None, run_id: str) -> Path | None:
    """``runs/<run>/alerts/`` of the run's frozen config, or of the Variables' data_dir before start froze one."""
    try:
        if record:
            return DataLayout.of(read_config(record["config_path"]).data_dir).run_records(record["run"]) / ALERTS_DIR
        if optional_variable("data_dir") is None:
            return None  # no marker in whatever directory the process happens to run in
        data_dir = _variables_config(("data_dir",)).data_dir
        return DataLayout.of(data_dir).run_records(run_key(run_id)) / ALERTS_DIR
    except (OSError, ConfigError, KeyError, ValueError):
        return None


def _claim(alerts: Path | None, name: str) -> Path | bool | None:
    """Claim the marker ``alerts/name`` (shared by all workers and the DAG processor): its path the first time,
    False if it was claimed already, None where it cannot be written (then every report counts: an email too many
    beats none)."""
    if alerts is None:
        return None
    try:
        alerts.mkdir(parents=True, exist_ok=True)
        marker = alerts / name
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        log.warning("cannot record that this failure was emailed; emailing anyway", exc_info=True)
        return None
    return marker


def _send_or_release(config: PipelineConfig, email: notify.Email, marker: Path | bool | None) -> None:
    try:
        send_email(config, email)
    except Exception:
        log.exception("could not send the failure email")
        if isinstance(marker, Path):  # not sent: let the next report of this failure try again
            with contextlib.suppress(OSError):
                marker.unlink()


def failure_recipients(context: dict[str, Any]) -> PipelineConfig:
    """The run's frozen config if the start task got that far, else whatever valid Variables give, else defaults."""
    return _recipients(context["ti"].xcom_pull(task_ids=CONFIG_TASK_ID))


def _recipients(record: dict[str, Any] | None) -> PipelineConfig:
    if record:
        try:
            return read_config(record["config_path"])
        except (OSError, ConfigError):
            pass
    return _variables_config(RECIPIENT_SETTINGS)


def _variables_config(names: tuple[str, ...]) -> PipelineConfig:
    """The defaults with those of ``names`` whose Variables hold valid values."""
    overrides = {}
    for name in names:
        value = optional_variable(name)
        if value is None:
            continue
        try:
            build_config({name: value})
        except ConfigError:
            continue
        overrides[name] = value
    return build_config(overrides)
