"""Airflow wiring for the ``ml_pipeline`` DAG. Thin on purpose: every task calls one library function
(``mlpipeline.<stage>``), the branch decides, and retries/timeouts/queues/pools are set here."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import TriggerRule, Variable, dag, get_current_context, task

from mlpipeline.config import ConfigError, PipelineConfig, build_config, load_config, read_config
from mlpipeline.stages import notify
from mlpipeline.storage import DataLayout, atomic_write_json, run_key

log = logging.getLogger(__name__)

DAG_ID = "ml_pipeline"
SMTP_CONN_ID = os.environ.get("ML_PIPELINE_SMTP_CONN_ID", "smtp_default")
# Parsed with the DAG file, so it comes from the environment (cheap), not from a Variable (a call per parse).
SCHEDULE = os.environ.get("ML_PIPELINE_SCHEDULE", "@daily") or None
if SCHEDULE in ("none", "None", "null"):
    SCHEDULE = None
# Celery queues by kind of work, so workers can be sized (and scaled) per kind; LocalExecutor ignores them.
QUEUE_DEFAULT = os.environ.get("ML_PIPELINE_QUEUE_DEFAULT", "default")
QUEUE_IO = os.environ.get("ML_PIPELINE_QUEUE_IO", "io")
QUEUE_TRAINING = os.environ.get("ML_PIPELINE_QUEUE_TRAINING", "training")
# Caps concurrent training across all workers and runs; created by the init step (deploy/init.sh, the demo).
TRAINING_POOL = os.environ.get("ML_PIPELINE_TRAINING_POOL", "training")


def _send(config: PipelineConfig, email: notify.Email) -> None:
    with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as smtp:
        smtp.send_email_smtp(
            to=config.notification_email,
            subject=email.subject,
            html_content=email.html,
            from_email=config.email_from,
        )
    log.info("sent %r to %s", email.subject, config.notification_email)


def _failure_recipients_config(context: dict[str, Any]) -> PipelineConfig:
    """The run's frozen config if the start task got that far, else whatever the Variables give."""
    record = context["ti"].xcom_pull(task_ids="start")
    if record:
        try:
            return read_config(record["config_path"])
        except (OSError, ConfigError):
            pass
    overrides = {}
    for name in ("notification_email", "email_from"):
        value = Variable.get(name, default=None)
        if value is not None:
            try:
                build_config({name: value})
                overrides[name] = value
            except ConfigError:
                pass
    return build_config(overrides)


def notify_failure(context: dict[str, Any]) -> None:
    """on_failure_callback: email the failure, whatever the task."""
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
        _send(_failure_recipients_config(context), email)
    except Exception:  # a broken mail server must not hide the original failure
        log.exception("could not send the failure email")


def _non_retryable(exc: Exception) -> AirflowFailException:
    """Bad config or bad data will not fix itself on retry: fail at once, with the library's message."""
    return AirflowFailException(f"{type(exc).__name__}: {exc}")


def _run() -> str:
    return run_key(get_current_context()["run_id"])


default_args = {
    "owner": "ml-team",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
    "on_failure_callback": notify_failure,
    "queue": QUEUE_DEFAULT,
}

DOC = """
# ml_pipeline

Retrains and ships the churn classifier (or whatever dataset the Variables describe).

`start` → `crawl_data` → `etl` → `train_model` (one mapped instance per candidate, listed by `list_candidates`
beside the crawl) → `validate_model` (best candidate) → **branch**:
- metric ≥ `accuracy_threshold` and not worse than the champion → `deploy_model` → `monitor` → `success_email` → `end`
- otherwise → `retrain_alert` → `end`

Each task calls one function of the `mlpipeline` library; data moves as files under `data_dir`
(`raw/<run>/`, `processed/<run>/`, `models/<run>/`, `runs/<run>/`), XCom carries only paths and small records.

**Configuration**: one Airflow Variable per setting (`crawl_url`, `ml_model_type`, `candidates`, `accuracy_threshold`,
`test_size`, `random_state`, `notification_email`, `dataset_schema`, ...); a trigger's `conf` overrides any of
them for one run, e.g. `{"accuracy_threshold": 0.9}`. `start` validates and freezes the config of the run.
Failures of any task are emailed (connection `smtp_default`).
"""


Record = dict[str, Any]
"""What flows between tasks via XCom: the frozen config's path plus each stage's small result record.
Each task adds its own entry, so the graph stays the straight line of the design."""


def _decided() -> Record:
    return get_current_context()["ti"].xcom_pull(task_ids="validate_model", key="record")


@dag(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=int(os.environ.get("ML_PIPELINE_MAX_ACTIVE_RUNS", "1")),
    default_args=default_args,
    tags=["ml", "training", "deployment"],
    doc_md=DOC,
)
def ml_pipeline() -> None:
    @task(retries=0)
    def start() -> Record:
        """Resolve Variables + run conf into one validated config, frozen for the whole run."""
        from mlpipeline.stages.train import check_candidates

        context = get_current_context()
        overrides = dict(context["dag_run"].conf or {})
        try:
            config = load_config(lambda name: Variable.get(name, default=None), overrides)
            check_candidates(config)
        except ConfigError as exc:
            raise _non_retryable(exc) from exc
        path = DataLayout.of(config.data_dir).run_records(_run()) / "config.json"
        atomic_write_json(path, json.loads(config.model_dump_json()))
        return {"config_path": str(path), "run": _run()}

    @task(retries=0)
    def list_candidates(record: Record) -> list[dict[str, Any]]:
        """The models to train, one mapped ``train_model`` each. Runs beside crawl_data, off the critical path
        (Airflow maps only over a task's whole return value, so this is its own small task)."""
        return [c.model_dump() for c in read_config(record["config_path"]).training_candidates()]

    @task(retries=3, retry_delay=timedelta(seconds=10), queue=QUEUE_IO)
    def crawl_data(record: Record) -> Record:
        from mlpipeline.stages.crawl import CrawlError, crawl

        try:
            return {**record, "crawl": crawl(read_config(record["config_path"]), record["run"]).to_dict()}
        except CrawlError as exc:
            # A source that answered but is unusable (404, malformed) will not heal on retry; others might.
            if getattr(exc, "retryable", True):
                raise
            raise _non_retryable(exc) from exc

    @task
    def etl(record: Record) -> Record:
        from mlpipeline.stages.etl import EtlError, etl

        raw = record["crawl"]
        try:
            result = etl(
                read_config(record["config_path"]),
                run=record["run"],
                raw_data_path=raw["data_path"],
                raw_format=raw["format"],
            )
        except EtlError as exc:
            raise _non_retryable(exc) from exc
        return {**record, "etl": result.to_dict()}

    @task(
        retries=1,
        queue=QUEUE_TRAINING,
        pool=TRAINING_POOL,
        execution_timeout=timedelta(hours=2),
        map_index_template="{{ candidate_name }}",
    )
    def train_model(record: Record, candidate: dict[str, Any]) -> Record:
        """One mapped instance per candidate: they run in parallel across training workers (pool permitting)."""
        from mlpipeline.config import Candidate
        from mlpipeline.stages.train import TrainError, train

        context = get_current_context()
        context["candidate_name"] = candidate["name"]  # type: ignore[typeddict-unknown-key]  # labels the map index
        try:
            result = train(
                read_config(record["config_path"]),
                run=record["run"],
                processed_data_path=record["etl"]["data_path"],
                data_sha256=record["crawl"]["sha256"],
                pipeline_run_id=context["run_id"],
                candidate=Candidate(**candidate),
            )
        except (TrainError, ConfigError) as exc:
            raise _non_retryable(exc) from exc
        return {**record, "train": result.to_dict()}

    @task.branch(retries=1, queue=QUEUE_TRAINING)
    def validate_model(trained: list[Record]) -> str:
        """Pick the best candidate, then decide: deploy it, or alert that a retrain is needed."""
        from mlpipeline.stages.train import TrainResult
        from mlpipeline.stages.validate import select_best, validate

        records = list(trained)
        config = read_config(records[0]["config_path"])
        best, ranking = select_best([TrainResult(**r["train"]) for r in records], config.validation_metric)
        record = next(r for r in records if r["train"]["candidate"] == best.candidate)
        decision = validate(config, run=record["run"], candidate=best, ranking=ranking)
        for reason in decision.reasons:
            log.info("validation: %s", reason)
        get_current_context()["ti"].xcom_push(key="record", value={**record, "validate": decision.to_dict()})
        return "deploy_model" if decision.deploy else "retrain_alert"

    @task(retries=1, queue=QUEUE_IO)
    def deploy_model() -> Record:
        from mlpipeline.stages.deploy import deploy
        from mlpipeline.stages.train import TrainResult
        from mlpipeline.stages.validate import ValidationDecision

        record = _decided()
        result = deploy(
            read_config(record["config_path"]),
            run=record["run"],
            candidate=TrainResult(**record["train"]),
            decision=ValidationDecision(**record["validate"]),
        )
        return {**record, "deploy": result.to_dict()}

    @task(retries=1)
    def monitor(record: Record) -> Record:
        from mlpipeline.stages.monitor import monitor

        config = read_config(record["config_path"])
        trained, deployed = record["train"], record["deploy"]
        result = monitor(
            config,
            run=record["run"],
            current_path=trained["processed_data_path"],
            reference_path=deployed.get("reference_data_path") or trained["processed_data_path"],
            holdout_path=trained["holdout_path"],
            expected_version=deployed["version"],
        ).to_dict()
        if result["alerts"]:
            _send(config, notify.drift_alert_email(dag_run=record["run"], monitoring=result))
        return {**record, "monitor": result}

    @task(queue=QUEUE_IO)
    def success_email(record: Record) -> str:
        email = notify.success_email(
            dag_run=record["run"],
            validation=record["validate"],
            training=record["train"],
            deployment=record["deploy"],
            monitoring=record["monitor"],
            etl=record["etl"],
        )
        _send(read_config(record["config_path"]), email)
        return email.subject

    @task(queue=QUEUE_IO)
    def retrain_alert() -> str:
        record = _decided()
        email = notify.retrain_alert_email(
            dag_run=record["run"], validation=record["validate"], training=record["train"]
        )
        _send(read_config(record["config_path"]), email)
        return email.subject

    end = EmptyOperator(task_id="end", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)

    started = start()
    cleaned = etl(crawl_data(started))
    trained = train_model.partial(record=cleaned).expand(candidate=list_candidates(started))
    decision = validate_model(trained)
    deployed = deploy_model()
    alert = retrain_alert()
    decision >> [deployed, alert]
    success_email(monitor(deployed)) >> end
    alert >> end


ml_pipeline()
