"""``on_failure_callback``: email a task's failure to the run's recipients, whatever the task."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Variable

from mlpipeline.config import ConfigError, PipelineConfig, build_config, read_config
from mlpipeline.stages import notify
from mlpipeline_airflow.notifications import send_email

log = logging.getLogger(__name__)

# The DAG's first task: its record names the run's frozen config (``{"config_path": ..., "run": ...}``).
CONFIG_TASK_ID = "start"
# The only settings a failure email needs; read one by one so one bad Variable cannot silence the rest.
RECIPIENT_SETTINGS = ("notification_email", "email_from")


def notify_failure(context: dict[str, Any]) -> None:
    """Email the failure. Never raises: a broken mail server must not hide the task's own error."""
    ti = context["ti"]
    error = context.get("exception")
    email = notify.failure_email(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        dag_run=ti.run_id,
        try_number=getattr(ti, "try_number", None),
        error=f"{type(error).__name__}: {error}" if error else "unknown error (see the task log)",
        log_url=getattr(ti, "log_url", None),
    )
    try:
        send_email(failure_recipients(context), email)
    except Exception:
        log.exception("could not send the failure email")


def failure_recipients(context: dict[str, Any]) -> PipelineConfig:
    """The run's frozen config if the start task got that far, else whatever valid Variables give, else defaults."""
    record = context["ti"].xcom_pull(task_ids=CONFIG_TASK_ID)
    if record:
        try:
            return read_config(record["config_path"])
        except (OSError, ConfigError):
            pass
    overrides = {}
    for name in RECIPIENT_SETTINGS:
        value = Variable.get(name, default=None)
        if value is None:
            continue
        try:
            build_config({name: value})
        except ConfigError:
            continue
        overrides[name] = value
    return build_config(overrides)
