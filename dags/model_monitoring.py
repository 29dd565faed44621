"""Airflow wiring for the ``model_monitoring`` DAG: every hour, judge the champion's live traffic (the model
server's prediction log) against the champion's own reference; when it is degraded, email the evidence and ask
``ml_pipeline`` to retrain (a ``retrain_request`` asset event, at most once per cool-down). Thin on purpose: the
work is ``mlpipeline.stages.live``; Airflow glue (failure emails, fail-fast errors) is ``mlpipeline_airflow``'s."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from airflow.exceptions import AirflowSkipException
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Label, TriggerRule, dag, get_current_context, task

from mlpipeline.config import ConfigError, PipelineConfig, load_config
from mlpipeline_airflow.assets import RETRAIN_REQUEST
from mlpipeline_airflow.callbacks import notify_failure, notify_run_failure
from mlpipeline_airflow.failures import fail_fast_on
from mlpipeline_airflow.notifications import send_email
from mlpipeline_airflow.settings import QUEUE_DEFAULT, schedule_from_env
from mlpipeline_airflow.variables import optional_variable

log = logging.getLogger(__name__)

DAG_ID = "model_monitoring"
SCHEDULE = schedule_from_env("MODEL_MONITORING_SCHEDULE", "@hourly")
_SHORT = 300  # characters of a reason carried in XCom and in the asset event

default_args = {
    "owner": "ml-team",
    # The prediction log's database, MLflow or SMTP restarting costs a try; every task is safe to repeat.
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=20),
    "on_failure_callback": notify_failure,
    "queue": QUEUE_DEFAULT,
}

DOC = """
# model_monitoring

Hourly (`MODEL_MONITORING_SCHEDULE`) check of the champion on live traffic, from the model server's prediction log
(`prediction_log_url`):

- `check_live_traffic`: the last `monitoring_window_hours` of the version the `champion` alias points at, against
  that version's own reference (bound at deploy): input drift per feature and drift of the answers (PSI, KS;
  `drift_psi_threshold`, `drift_ks_pvalue`), the live score on rows with feedback vs the validation score
  (`live_score_tolerance`), latency p50/p95 and error rate. Verdict *healthy*, *degraded* (with reasons) or
  *not_enough_traffic* (fewer than `monitoring_min_samples` predictions). Recorded in
  `<data_dir>/monitoring/<run>.json`, the `monitoring_checks` / `monitoring_drift` tables and as `live_*`
  metrics on the champion's MLflow run.
- *degraded*: `request_retrain` emits a `retrain_request` asset event, which starts `ml_pipeline` — at most once per
  `retrain_cooldown_hours` (`<data_dir>/state/retrain_request.json`); within the cool-down it is skipped and says
  when the last request was. `alert` emails the evidence either way.
- `purge_prediction_log` deletes logged predictions older than `prediction_log_retention_days`, every run.

Settings are the Airflow Variables `ml_pipeline` reads. Without `prediction_log_url` or a champion, the run is
skipped.
"""


def _config() -> PipelineConfig:
    with fail_fast_on(ConfigError):
        return load_config(optional_variable)  # an unset Variable: the setting's default


@task
def check_live_traffic() -> dict[str, Any]:
    """Judge the champion's live traffic of the last `monitoring_window_hours` against its own reference and record
    the verdict (JSON under `<data_dir>/monitoring/`, dashboard tables, the champion's MLflow run). Skipped when
    there is no prediction log or no champion; a champion without a reference fails at once."""
    from mlpipeline.stages.live import NothingToMonitor, ReferenceError, check_live_traffic

    config = _config()
    context = get_current_context()
    # The run's own time, not the clock: a retry judges the same window and rewrites the same record.
    now = context["dag_run"].run_after.timestamp()
    try:
        with fail_fast_on(ReferenceError):
            check = check_live_traffic(config, check_id=context["run_id"], now=now)
    except NothingToMonitor as exc:
        raise AirflowSkipException(str(exc)) from exc
    for reason in check.reasons:
        log.info("%s: %s", check.verdict, reason)
    return {
        "check_id": check.check_id,
        "verdict": check.verdict,
        "model_name": check.model_name,
        "model_version": check.model_version,
        "reasons": [reason[:_SHORT] for reason in check.reasons[:5]],
        "record_path": check.record_path,
    }


@task.branch
def route(checked: dict[str, Any]) -> list[str] | str:
    """A degraded champion goes to `request_retrain` and `alert`; healthy or too little traffic ends quietly."""
    return ["request_retrain", "alert"] if checked["verdict"] == "degraded" else "end"


@task(outlets=[RETRAIN_REQUEST])
def request_retrain(checked: dict[str, Any]) -> dict[str, Any]:
    """Emit a `retrain_request` asset event (reason, model name and version, the check's record), which starts
    `ml_pipeline` — unless one was requested within `retrain_cooldown_hours`: then this task is skipped (no event)
    and says when the last request was."""
    from mlpipeline.stages.live.retrain import decide_retrain, record_request

    config = _config()
    now = time.time()
    decision = decide_retrain(config, check_id=checked["check_id"], now=now)
    if not decision.allowed:
        raise AirflowSkipException(decision.message)
    extra = {
        "reason": "; ".join(checked["reasons"])[: _SHORT * 2],
        "model_name": checked["model_name"],
        "model_version": checked["model_version"],
        "check": checked["record_path"],
    }
    # Remembered before the event goes out: a retry of this check may request again, any other check waits.
    record_request(config, check_id=checked["check_id"], reason=extra["reason"], extra=extra, now=now)
    get_current_context()["outlet_events"][RETRAIN_REQUEST].extra = extra
    log.info("retraining requested (%s)", decision.message)
    return extra


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def alert(checked: dict[str, Any]) -> None:
    """Email the evidence of a degraded champion to `notification_email`: the reasons, the most drifted features
    with PSI and KS, the live vs validation score, the window and sample sizes, and whether retraining was
    requested."""
    from mlpipeline.links import airflow_run_url, mlflow_run_url
    from mlpipeline.stages.live.alert import degraded_email
    from mlpipeline.stages.live.retrain import decide_retrain, last_request
    from mlpipeline.storage import read_json

    config = _config()
    record = read_json(checked["record_path"])
    last = last_request(config)
    if last is not None and last.get("check_id") == checked["check_id"]:
        retrain = f"requested at {last['requested_at_iso']}: ml_pipeline starts on the retrain_request event"
    else:
        retrain = "not requested: " + decide_retrain(config, check_id=checked["check_id"]).message
    links = {
        "Airflow run": airflow_run_url(config, DAG_ID, checked["check_id"]),
        "champion's MLflow run": mlflow_run_url(config, record["mlflow_run_id"]),
    }
    send_email(config, degraded_email(record, retrain=retrain, links=links))


@task(trigger_rule=TriggerRule.ALL_DONE)
def purge_prediction_log() -> dict[str, Any]:
    """Delete logged requests, predictions and feedback older than `prediction_log_retention_days` (every run,
    whatever the check found). Skipped without a prediction log."""
    from mlpipeline.stages.live import purge_prediction_log

    config = _config()
    if not config.prediction_log_url:
        raise AirflowSkipException("prediction_log_url is not set: no prediction log to purge")
    result = purge_prediction_log(config)
    log.info("purged %s", result.to_dict())
    return result.to_dict()


@dag(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    on_failure_callback=notify_run_failure,  # a failed run whose task failures were not emailed
    tags=["ml", "monitoring"],
    doc_md=DOC,
)
def model_monitoring() -> None:
    checked = check_live_traffic()
    branch = route(checked)
    retrain = request_retrain(checked)
    email = alert(checked)
    end = EmptyOperator(
        task_id="end",
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        doc_md="Ends the run: after the alert when the champion is degraded, at once otherwise.",
    )
    branch >> Label("degraded") >> [retrain, email]
    retrain >> email >> end
    branch >> Label("healthy / not enough traffic") >> end
    checked >> purge_prediction_log()


model_monitoring()
