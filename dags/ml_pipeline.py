"""Airflow wiring for the ``ml_pipeline`` DAG. Thin on purpose: every task calls one library function
(``mlpipeline.stages.<stage>``) and says how it runs (retries, timeouts, queues, pools); Airflow glue (emails, the
failure callback, fail-fast errors) is in ``mlpipeline_airflow``; the graph is wired at the bottom."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Label, TriggerRule, dag, get_current_context, task

from mlpipeline.config import ConfigError, load_config, read_config
from mlpipeline.stages import notify
from mlpipeline.storage import DataLayout, atomic_write_json
from mlpipeline_airflow.assets import CHAMPION_MODEL, PROCESSED_DATA, RAW_SNAPSHOT, RETRAIN_REQUEST
from mlpipeline_airflow.callbacks import notify_failure, notify_run_failure
from mlpipeline_airflow.failures import fail_fast_on
from mlpipeline_airflow.links import MlflowRunLink, ReportLink, with_links
from mlpipeline_airflow.notifications import send_email
from mlpipeline_airflow.params import run_params, without_empty
from mlpipeline_airflow.runs import (
    champion_extra,
    current_run_key,
    processed_data_extra,
    raw_snapshot_extra,
    retrain_requests,
    set_asset_event_extra,
)
from mlpipeline_airflow.settings import (
    DEPLOY_POOL,
    QUEUE_DEFAULT,
    QUEUE_IO,
    QUEUE_TRAINING,
    TRAINING_POOL,
    asset_or_time_schedule,
    schedule_from_env,
)
from mlpipeline_airflow.variables import optional_variable

log = logging.getLogger(__name__)

DAG_ID = "ml_pipeline"
# Daily (or as ML_PIPELINE_SCHEDULE says), and whenever `model_monitoring` asks for a retrain (an Asset event).
SCHEDULE = asset_or_time_schedule(schedule_from_env("ML_PIPELINE_SCHEDULE"), RETRAIN_REQUEST)
# One run at a time (compose and README say the same): a second run would mostly queue behind the first for the
# training and deploy pools. Above 1 the champion is still safe (deploys are serialised and compare-and-set).
MAX_ACTIVE_RUNS = int(os.environ.get("ML_PIPELINE_MAX_ACTIVE_RUNS", "1"))


# Every task retries at least twice (a worker, Redis or MLflow restart costs a try, not the run); errors that a
# retry would only repeat (bad config, bad data, a refused model) fail at once through fail_fast_on.
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

Retrains and ships a model for a tabular dataset (binary, multiclass or regression; the demo's churn data by
default, or whatever dataset the Variables describe).

`start` → `crawl_data` → `check_data` → `data_changed` (**branch**):
- *unchanged*: the data (sha256) and the training (candidates, settings, code) are those the champion came from
  → `report_unchanged` → `end`: nothing is trained or registered
- *changed*: → `etl` → `train_model` (one mapped instance per candidate, listed by `list_candidates` beside the
  crawl) → `validate_model` (best candidate) → `decide` (**branch**):
  - *deploy*: `validation_metric` passes `metric_threshold` and beats the champion by more than `champion_margin`
    (both in the metric's direction) →
    `deploy_model` → `monitor` → `success_email` → `end`
  - *reject*: otherwise (a tie keeps the champion) → `retrain_alert` → `end`

Each task calls one function of the `mlpipeline` library; data moves as files under `data_dir`
(`raw/<run>/`, `processed/<run>/`, `models/<run>/`, `runs/<run>/`), XCom carries only paths and small records.

**Trigger form**: the settings a run may change, each with its type, bounds and choices; an empty field means the
Variable's value.

**Configuration**: one Airflow Variable per setting (`crawl_url`, `task`, `ml_model_type`, `candidates`,
`metric_threshold`, `test_size`, `random_state`, `notification_email`, `dataset_schema`, ...); a trigger's `conf`
may change, for one run, how a model is trained and judged (e.g. `{"metric_threshold": 0.9}`), never
infrastructure (sources, paths, URLs, registry names, recipients). `start` validates and freezes the config of the run.
Every task retries at least twice; a failure is emailed (connection `smtp_default`) once, when no retry is left.
"""


Record = dict[str, Any]
"""What flows between tasks via XCom: the frozen config's path plus each stage's small result record.
Each task adds its own entry and passes the whole record on, so every edge of the graph is an argument."""


# The tasks, in pipeline order. Their docstrings are their docs in the Airflow UI.


@task
def start() -> Record:
    """Resolve the Variables and the run's conf into one validated config, frozen for the whole run
    (`runs/<run>/config.json`). Bad config fails here, at once, and is emailed. A run that live monitoring asked
    for records why (`runs/<run>/trigger.json`)."""
    from mlpipeline.stages.train import check_candidates

    overrides = without_empty(dict(get_current_context()["dag_run"].conf or {}))  # empty form field: the Variable
    with fail_fast_on(ConfigError):
        config = load_config(optional_variable, overrides)  # an unset Variable: the setting's default
        check_candidates(config)
    run = current_run_key()
    path = DataLayout.of(config.data_dir).run_records(run) / "config.json"
    atomic_write_json(path, json.loads(config.model_dump_json()))
    record: Record = {"config_path": str(path), "run": run}
    requests = retrain_requests()
    if requests:
        log.info("retraining requested: %s", "; ".join(str(r.get("reason")) for r in requests))
        atomic_write_json(path.parent / "trigger.json", {"retrain_requests": requests})
        record["retrain_requests"] = [str(r.get("reason")) for r in requests]
    return record


@task
def list_candidates(record: Record) -> list[dict[str, Any]]:
    """The models to train, one mapped `train_model` each. Runs beside `crawl_data`, off the critical path
    (Airflow maps only over a task's whole return value, so this is its own small task)."""
    return [c.model_dump() for c in read_config(record["config_path"]).training_candidates()]


@task(retries=3, retry_delay=timedelta(seconds=10), queue=QUEUE_IO, outlets=[RAW_SNAPSHOT])
def crawl_data(record: Record) -> Record:
    """Download the dataset from `crawl_url` (every page) into `raw/<run>/`, with its manifest and sha256.
    A source that answered with something unusable (4xx, malformed data) fails at once; one that was down or
    overloaded is retried. Emits a `raw_snapshot` asset event (run, sha256, rows, path)."""
    from mlpipeline.stages.crawl import CrawlError, crawl

    with fail_fast_on(CrawlError):  # lets through the errors marked retryable
        crawled = {**record, "crawl": crawl(read_config(record["config_path"]), record["run"]).to_dict()}
    set_asset_event_extra(RAW_SNAPSHOT, raw_snapshot_extra(crawled))
    return crawled


@task
def check_data(record: Record) -> Record:
    """Is there anything new to train? Compares the crawled data's sha256, and this run's candidates, the settings
    that shape or judge them and the code, with what the champion was trained with (its registry tags). The answer
    and why go to `runs/<run>/data_check.json`."""
    from mlpipeline.stages.validate import check_data

    check = check_data(read_config(record["config_path"]), run=record["run"], data_sha256=record["crawl"]["sha256"])
    log.info("data check: %s", check.reason)
    return {**record, "data_check": check.to_dict()}


@task.branch
def data_changed(record: Record) -> str:
    """`etl` and the rest of the pipeline if there is something new to train; else `report_unchanged` (training
    would only reproduce the champion: nothing is trained or registered)."""
    return "report_unchanged" if record["data_check"]["unchanged"] else "etl"


@task(queue=QUEUE_IO)
def report_unchanged(record: Record) -> str:
    """The run ends early, the champion keeps serving: said in the run's record (`data_check.json`) and, if
    `notify_unchanged`, in one short email with the run's report and a link to the Airflow run."""
    from mlpipeline.stages.validate import DataCheck, unchanged_email
    from mlpipeline_airflow.notifications import send_run_email

    config = read_config(record["config_path"])
    check = DataCheck(**record["data_check"])
    if not config.notify_unchanged:
        return ""
    return send_run_email(config, unchanged_email(check, dag_run=record["run"]), run=record["run"]).subject


@task(outlets=[PROCESSED_DATA])
def etl(record: Record) -> Record:
    """Clean the raw snapshot against `dataset_schema` (dedupe, impute, encode) into Parquet under
    `processed/<run>/`, deciding what the data says: the task (if `auto`), the feature columns (if not declared:
    inferred and frozen) and the metric. The run goes on with that resolved config (`runs/<run>/config.resolved.json`).
    Data that breaks the schema, or a metric that does not fit the task, fails at once. Emits a `processed_data` asset
    event (run, the raw data's sha256, rows kept and quarantined, path)."""
    from mlpipeline.stages.etl import EtlError, etl, resolved_config

    raw = record["crawl"]
    config = read_config(record["config_path"])
    with fail_fast_on(EtlError, ConfigError):
        result = etl(config, run=record["run"], raw_data_path=raw["data_path"], raw_format=raw["format"])
        resolved = resolved_config(config, result)
    path = DataLayout.of(config.data_dir).run_records(record["run"]) / "config.resolved.json"
    atomic_write_json(path, json.loads(resolved.model_dump_json()))
    features = resolved.dataset_schema.feature_names
    log.info("task %s, metric %s, %d feature columns", resolved.task, resolved.validation_metric, len(features))
    cleaned = {**record, "config_path": str(path), "etl": result.to_dict()}
    set_asset_event_extra(PROCESSED_DATA, processed_data_extra(cleaned))
    return cleaned


@task(
    queue=QUEUE_TRAINING,
    pool=TRAINING_POOL,
    execution_timeout=timedelta(hours=2),
    map_index_template="{{ candidate_name }}",
)
def train_model(record: Record, candidate: dict[str, Any]) -> Record:
    """Fit one candidate model and evaluate it on a held-out split, logged to MLflow. One mapped instance per
    candidate, labelled with its name: they run in parallel across training workers (`training` pool permitting)."""
    from mlpipeline.config import Candidate
    from mlpipeline.integrity import IntegrityError
    from mlpipeline.stages.train import TrainError, train

    context = get_current_context()
    context["candidate_name"] = candidate["name"]  # type: ignore[typeddict-unknown-key]  # labels the map index
    with fail_fast_on(TrainError, ConfigError, IntegrityError):  # IntegrityError: no signing key configured
        result = train(
            read_config(record["config_path"]),
            run=record["run"],
            processed_data_path=record["etl"]["data_path"],
            data_sha256=record["crawl"]["sha256"],
            pipeline_run_id=context["run_id"],
            candidate=Candidate(**candidate),
            dag_id=DAG_ID,
            task_id=context["ti"].task_id,
            map_index=context["ti"].map_index,
        )
    return {**record, "train": result.to_dict()}


# Airflow makes a task's docstring its doc, but not a mapped task's: hand it over.
train_model = train_model.override(doc_md=train_model.function.__doc__)


@task(queue=QUEUE_TRAINING)
def validate_model(trained: list[Record]) -> Record:
    """Pick the best candidate on `validation_metric` and judge it: past `metric_threshold`, and better than the
    champion on the same holdout by more than `champion_margin` (a tie keeps the champion)? The decision, its
    reasons and the ranking go to `runs/<run>/validate.json`."""
    from mlpipeline.integrity import IntegrityError
    from mlpipeline.stages.train import TrainResult
    from mlpipeline.stages.validate import select_best, validate

    # One slice request: iterating would ask for one item past the end, which Airflow logs as an ERROR.
    records = list(trained[:])
    config = read_config(records[0]["config_path"])
    best, ranking = select_best([TrainResult(**r["train"]) for r in records], config.validation_metric)
    record = next(r for r in records if r["train"]["candidate"] == best.candidate)
    with fail_fast_on(IntegrityError):  # a refused champion model: retrying would refuse it again
        decision = validate(config, run=record["run"], candidate=best, ranking=ranking)
    for reason in decision.reasons:
        log.info("validation: %s", reason)
    return {**record, "validate": decision.to_dict()}


@task.branch
def decide(record: Record) -> str:
    """Follow the validation's decision: `deploy_model` if the candidate passed, else `retrain_alert`.
    The branch not taken is skipped, and everything after it."""
    return "deploy_model" if record["validate"]["deploy"] else "retrain_alert"


@task(queue=QUEUE_IO, pool=DEPLOY_POOL, outlets=[CHAMPION_MODEL])
def deploy_model(record: Record) -> Record:
    """Register the validated candidate in MLflow (once: the same model is never registered twice), move the
    `champion` alias to it only if it still points where validation saw it, have the endpoint load it and check
    that it answers like the offline model; any failure moves the alias back. Runs one at a time (`deploy` pool);
    safe to retry at any point. A rollback that cannot reach MLflow fails at once, loudly. Emits a `champion_model`
    asset event (model name, version, metric and score, run)."""
    from mlpipeline.integrity import IntegrityError
    from mlpipeline.stages.deploy import DeployError, deploy
    from mlpipeline.stages.train import TrainResult
    from mlpipeline.stages.validate import ValidationDecision

    with fail_fast_on(DeployError, IntegrityError):  # lets through the errors marked retryable
        result = deploy(
            read_config(record["config_path"]),
            run=record["run"],
            candidate=TrainResult(**record["train"]),
            decision=ValidationDecision(**record["validate"]),
        )
    deployed = {**record, "deploy": result.to_dict()}
    set_asset_event_extra(CHAMPION_MODEL, champion_extra(deployed))
    return deployed


@task
def monitor(record: Record) -> Record:
    """Check the live endpoint (healthy, serving the deployed version, answering on the holdout) and drift against
    the reference data (PSI, KS): each feature, the target and the deployed model's predictions, compared as the
    task says (class mix or numbers). An unhealthy endpoint fails the task; drift alerts are emailed."""
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
        send_email(config, notify.drift_alert_email(dag_run=record["run"], monitoring=result))
    return {**record, "monitor": result}


@task(queue=QUEUE_IO)
def success_email(record: Record) -> str:
    """Email what the run did (data, training, validation, deployment, monitoring) to `notification_email`, with
    the run's report (logged to the new champion's MLflow run too) and links to the Airflow and MLflow runs."""
    from mlpipeline_airflow.notifications import send_run_email

    email = notify.success_email(
        dag_run=record["run"],
        validation=record["validate"],
        training=record["train"],
        deployment=record["deploy"],
        monitoring=record["monitor"],
        etl=record["etl"],
    )
    config = read_config(record["config_path"])
    return send_run_email(config, email, run=record["run"], mlflow_run_id=record["train"]["mlflow_run_id"]).subject


@task(queue=QUEUE_IO)
def retrain_alert(record: Record) -> str:
    """Email why the candidate was rejected (the champion keeps serving): a retrain or a look at the data is due.
    With the run's report (logged to the candidate's MLflow run too) and links to the Airflow and MLflow runs."""
    from mlpipeline_airflow.notifications import send_run_email

    email = notify.retrain_alert_email(dag_run=record["run"], validation=record["validate"], training=record["train"])
    config = read_config(record["config_path"])
    return send_run_email(config, email, run=record["run"], mlflow_run_id=record["train"]["mlflow_run_id"]).subject


# The tasks' extra links in the UI (see mlpipeline_airflow.links): the candidate's MLflow run and the run's report
# (empty where no MLflow UI is known). The email tasks link to the report once it is logged.
_REPORT_OF_THE_CHOSEN = ReportLink(record_from="validate_model", require_logged=True)
train_model = with_links(train_model, MlflowRunLink())
validate_model = with_links(validate_model, MlflowRunLink(), ReportLink())
deploy_model = with_links(deploy_model, MlflowRunLink())
success_email = with_links(success_email, _REPORT_OF_THE_CHOSEN)
retrain_alert = with_links(retrain_alert, _REPORT_OF_THE_CHOSEN)


@dag(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=MAX_ACTIVE_RUNS,
    default_args=default_args,
    on_failure_callback=notify_run_failure,  # a failed run whose task failures were not emailed
    tags=["ml", "training", "deployment"],
    description="Crawl, clean, train, judge and ship a model for a tabular dataset (binary, multiclass, regression)",
    doc_md=DOC,
    params=run_params(),  # the trigger form: the settings a run may change, empty = the Variable
)
def ml_pipeline() -> None:
    end = EmptyOperator(
        task_id="end",
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        doc_md="Joins the branches (deployed, rejected, unchanged): succeeds when one of them did and nothing failed.",
    )

    started = start()
    crawled = check_data(crawl_data(started))
    changed = data_changed(crawled)

    unchanged = report_unchanged(crawled)
    changed >> Label("unchanged") >> unchanged
    unchanged >> end

    cleaned = etl(crawled)
    changed >> Label("changed") >> cleaned
    trained = train_model.partial(record=cleaned).expand(candidate=list_candidates(started))
    validated = validate_model(trained)
    decision = decide(validated)

    deployed = deploy_model(validated)
    decision >> Label("deploy") >> deployed
    success_email(monitor(deployed)) >> end

    alert = retrain_alert(validated)
    decision >> Label("reject") >> alert
    alert >> end


ml_pipeline()
