"""``make demo``: run ml_pipeline once, end to end, through Airflow's scheduler and executor on the embedded
stack (SQLite + LocalExecutor, MLflow on SQLite), then print what happened.

Environment:

* ``DEMO_DATASET``: the data the demo's own data source serves to the pipeline: ``churn`` (default, the synthetic
  binary customer-churn data) or a public dataset that ships in an installed package: ``penguins`` (multiclass,
  raw and messy), ``seattle_weather`` (multiclass, dates), ``iris``, ``wine`` (multiclass), ``breast_cancer``
  (binary), ``diabetes`` (regression); see mlpipeline.dev.public_datasets. It sets the Variables crawl_url,
  dataset_schema (the target; the columns are inferred) and registered_model_name (``<dataset>_classifier`` or
  ``_regressor``, so that each dataset has its own champion), and the model server serves that model.
* ``AIRFLOW_VAR_<NAME>``: any pipeline Variable (see the config), as in a deployment; it overrides the demo's own
  setting, the bundled source included: ``AIRFLOW_VAR_CRAWL_URL=<url> AIRFLOW_VAR_DATASET_SCHEMA='{"target":
  "<column>"}' make demo`` runs the pipeline on your data (and ``AIRFLOW_VAR_REGISTERED_MODEL_NAME`` keeps its
  champion apart from the churn demo's).
* ``DEMO_CONF`` (JSON run conf, e.g. '{"metric_threshold": 0.99}'), ``DEMO_DIR`` (state, default .demo/),
  ``DEMO_DATA_DIR`` (default data/), ``DEMO_*_PORT`` (see mlpipeline.dev.localstack.Ports), ``DEMO_TIMEOUT``
  (seconds).

After a run that deployed, the demo sends live traffic to the model server (held-out rows of the run, the second
half drifted on a few numeric features, outcomes posted to /feedback, some wrong; see mlpipeline.dev.traffic), which
logs it to the prediction log (``predictions.db`` in DEMO_DIR: the model server's MLPIPELINE_PREDICTION_LOG_URL and
the prediction_log_url Variable), then triggers ``model_monitoring`` once through the scheduler and waits for it; a
degraded verdict asks ml_pipeline for a retrain, whose run the demo follows too.

The summary shows the branch taken, the decision, the data, the served model, one prediction for a held-out row
of the data (its columns from the run's resolved config), the live traffic and the monitoring verdict, the run's
report (``runs/<run>/report.html``) and where the emails are (``.eml`` files).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from mlpipeline.config import PipelineConfig, read_config
from mlpipeline.dev.localstack import (
    BUNDLED_DATASET,
    REPO_ROOT,
    AirflowClient,
    LocalStack,
    Ports,
    StackError,
    variables_from_environment,
)
from mlpipeline.dev.mailcatcher import read_mailbox
from mlpipeline.dev.traffic import DriftSpec, TrafficError, TrafficPlan, TrafficResult, traffic_for_run
from mlpipeline.payload import json_rows
from mlpipeline.storage import DataLayout, read_json, run_key
from mlpipeline.tasks import higher_is_better

DAG_ID = "ml_pipeline"
MONITORING_DAG_ID = "model_monitoring"
FINISHED = {"success", "failed"}
# After a deploy: live traffic on the run's held-out rows, the second half drifted (three numeric features moved by
# 1.5 standard deviations), outcomes posted for 90 % of the rows, a quarter of them wrong: monitoring has something
# to find. Above monitoring_min_samples (200) with room to spare.
DEMO_TRAFFIC = TrafficPlan(
    rows=600, batch_size=20, feedback_fraction=0.9, wrong_fraction=0.25, drift=DriftSpec(shift=1.5, fraction=0.5)
)
# How long the scheduler may take to start the ml_pipeline run that a retrain request (an asset event) asks for.
RETRAIN_START_SECONDS = 90


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def follow(client: AirflowClient, run_id: str, timeout: float, dag_id: str = DAG_ID) -> str:
    """Print each task's state changes until the run finishes; return the run's final state."""
    seen: dict[str, str | None] = {}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for task_id, state in client.task_states(dag_id, run_id).items():
            if state != seen.get(task_id) and state not in (None, "scheduled", "queued"):
                say(f"  {task_id:<20} {state}  (+{time.monotonic() - started:.0f} s)")
            seen[task_id] = state
        state = client.run_state(dag_id, run_id)
        if state in FINISHED:
            return state
        time.sleep(1)
    raise StackError(f"run {run_id} did not finish within {timeout:.0f} s")


def summary(
    stack: LocalStack, run_id: str, states: dict[str, str | None], mail_before: int, live: LiveOutcome | None
) -> None:
    variables = stack.pipeline_variables()
    layout = DataLayout.of(variables["data_dir"])
    run = run_key(run_id)
    records = layout.run_records(run)
    manifest = read_json(layout.raw(run) / "manifest.json")
    branch = next((t for t in BRANCHES if states.get(t) == "success"), "?")
    print()
    print("=" * 78)
    print(f"ml_pipeline run {run_id}")
    print(f"  branch taken      : {branch}")
    trained = (records / "validate.json").exists()
    if trained:
        _trained_summary(layout, run)
    else:
        _unchanged_summary(records)
    print(
        f"  raw snapshot      : {layout.raw(run)}  ({manifest['rows']} rows, sha256 {manifest['sha256'][:12]}…,"
        f" unchanged={manifest.get('unchanged')})"
    )
    config, holdout = _trained_model_data(layout, run) if trained else _champion_model_data(stack, layout)
    if config is not None:
        print(f"  dataset           : {config.crawl_url}")
        print(f"                      task {config.task}, target {config.dataset_schema.target!r}, {_features(config)}")
    _serving_summary(stack.serving_url, config, holdout)
    if live is not None:
        _live_summary(live)
    print(f"  report            : {_run_report(records)}")
    mails = read_mailbox(stack.mail_dir)[mail_before:]
    for message in mails:
        print(f"  email sent        : {message['subject']!r} to {message['to']}")
    if not mails:
        print("  email sent        : none")
    print(f"  emails (.eml)     : {stack.mail_dir}")
    print(f"  Airflow           : {stack.api_url} (admin / see {stack.root / 'secrets.json'}), logs {stack.logs}")
    print("=" * 78)


# The tasks that end each branch of the DAG, in the order the summary looks for them.
BRANCHES = ("deploy_model", "retrain_alert", "report_unchanged")


def _trained_summary(layout: DataLayout, run: str) -> None:
    """The decision, the candidate and the data of a run that trained."""
    decision = read_json(layout.run_records(run) / "validate.json")
    train = read_json(layout.models(run) / decision["candidate"] / "train.json")
    etl = read_json(layout.processed(run) / "etl.json")
    print(f"  decision          : {'DEPLOY' if decision['deploy'] else 'KEEP CHAMPION'}")
    for reason in decision["reasons"]:
        print(f"                      - {reason}")
    scores = {k: v for k, v in train["metrics"].items() if isinstance(v, (int, float))}
    print(f"  candidate {train['candidate']}: {', '.join(f'{k} {v:.4f}' for k, v in sorted(scores.items()))}")
    threshold, metric = decision.get("threshold"), decision["metric"]
    bar = "none" if threshold is None else f"{'>=' if higher_is_better(metric) else '<='} {threshold}"
    print(f"  threshold         : {metric} {bar}")
    print(
        f"  processed data    : {etl['data_path']}  ({etl['rows_out']} rows, {etl['rows_quarantined']} quarantined"
        f" -> {etl['quarantine_path']})"
    )
    print(f"  model             : {train['model_uri']} (MLflow run {train['mlflow_run_id']})")


def _unchanged_summary(records: Path) -> None:
    check = read_json(records / "data_check.json")
    print("  decision          : NOTHING TO DO (nothing trained, nothing registered)")
    print(f"                      - {check['reason']}")
    print("                      (change a training setting, e.g. DEMO_CONF='{\"random_state\": 7}', to train anew)")


def _run_config(records: Path) -> PipelineConfig | None:
    """The run's config as the ETL resolved it (its columns known), else as ``start`` froze it."""
    for name in ("config.resolved.json", "config.json"):
        if (records / name).exists():
            return read_config(str(records / name))
    return None


def _trained_model_data(layout: DataLayout, run: str) -> tuple[PipelineConfig | None, str | None]:
    """A run that trained: its resolved config and its chosen candidate's held-out rows."""
    decision = read_json(layout.run_records(run) / "validate.json")
    train = read_json(layout.models(run) / decision["candidate"] / "train.json")
    return _run_config(layout.run_records(run)), str(train["holdout_path"])


def _champion_model_data(stack: LocalStack, layout: DataLayout) -> tuple[PipelineConfig | None, str | None]:
    """A run that trained nothing: the config and held-out rows of the run that trained the served champion."""
    from mlflow import MlflowClient

    answer = httpx.get(f"{stack.serving_url}/model", timeout=10)
    if answer.status_code != 200 or not answer.json().get("run_id"):
        return None, None
    uri = stack.pipeline_variables()["mlflow_tracking_uri"]
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(answer.json()["run_id"]).data.tags
    run, candidate = tags.get("pipeline_run"), tags.get("candidate")
    if not run or not candidate:
        return None, None
    holdout = layout.models(run) / candidate / "holdout.parquet"
    return _run_config(layout.run_records(run)), str(holdout) if holdout.exists() else None


def _features(config: PipelineConfig) -> str:
    if not config.dataset_schema.is_resolved:
        return "feature columns inferred from the data"
    return f"{len(config.dataset_schema.feature_names)} feature columns"


def _serving_summary(serving_url: str, config: PipelineConfig | None, holdout: str | None) -> None:
    model = httpx.get(f"{serving_url}/model", timeout=10)
    if model.status_code != 200:
        print(f"  serving           : no champion yet (HTTP {model.status_code})")
        return
    body = model.json()
    print(f"  serving           : {body['name']} v{body['version']} at {serving_url}")
    if holdout is None or config is None or not config.dataset_schema.is_resolved:
        return
    row = json_rows(pd.read_parquet(holdout, columns=config.dataset_schema.feature_names).head(1))
    answer = httpx.post(f"{serving_url}/predict", json={"rows": row}, timeout=10).json()
    print(f"  one prediction    : POST /predict {_short(row[0], 160)}")
    probabilities = answer.get("probabilities")
    shown = "" if probabilities is None else f" p={_short(_rounded(probabilities), 160)}"
    predictions = _short(_rounded(answer.get("predictions")), 60)
    print(f"                      -> {predictions}{shown} (model v{answer.get('model_version')})")


def _rounded(value: Any) -> Any:
    """Numbers to 4 decimals, in lists and dicts too (a summary line, not the answer)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def _short(value: object, limit: int) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class LiveOutcome:
    """What the demo's live traffic and its monitoring run did."""

    traffic: TrafficResult
    run_id: str
    state: str
    record: dict[str, Any] | None  # the check's JSON record (verdict, reasons); None if the check did not run
    retrain_run: str | None = None  # the ml_pipeline run the degraded verdict asked for
    retrain_branch: str | None = None


def live_monitoring(stack: LocalStack, client: AirflowClient, run: str, timeout: float) -> LiveOutcome:
    """Live traffic (a drifted slice, feedback) to the model server, then one model_monitoring run through the
    scheduler; if it asks for a retrain, the ml_pipeline run that starts follows to its end too (the demo leaves
    nothing running)."""
    layout = DataLayout.of(stack.pipeline_variables()["data_dir"])
    drift = DEMO_TRAFFIC.drift
    say(
        f"sending live traffic: {DEMO_TRAFFIC.rows} held-out rows, the last {drift.fraction:.0%} drifted,"
        f" outcomes for {DEMO_TRAFFIC.feedback_fraction:.0%} ({DEMO_TRAFFIC.wrong_fraction:.0%} of them wrong)"
    )
    token = stack.pipeline_secrets()["MLPIPELINE_SERVING_TOKEN"]
    try:
        traffic = traffic_for_run(layout.run_records(run), DEMO_TRAFFIC, serving_url=stack.serving_url, token=token)
    except (TrafficError, httpx.HTTPError) as exc:
        raise StackError(f"live traffic to {stack.serving_url} failed: {exc}") from exc
    say(f"  {traffic.summary()}")
    earlier = {r["dag_run_id"] for r in client.runs(DAG_ID)}
    monitoring_run = client.trigger(MONITORING_DAG_ID, {})
    say(f"triggered {MONITORING_DAG_ID} run {monitoring_run}")
    state = follow(client, monitoring_run, timeout, MONITORING_DAG_ID)
    record_path = layout.root / "monitoring" / f"{run_key(monitoring_run)}.json"
    record = read_json(record_path) if record_path.exists() else None
    live = LiveOutcome(traffic, monitoring_run, state, record)
    if client.task_states(MONITORING_DAG_ID, monitoring_run).get("request_retrain") == "success":
        live.retrain_run = _retrain_run(client, earlier)
        if live.retrain_run is not None:
            say(f"the retrain request started {DAG_ID} run {live.retrain_run}")
            follow(client, live.retrain_run, timeout)
            states = client.task_states(DAG_ID, live.retrain_run)
            live.retrain_branch = next((t for t in BRANCHES if states.get(t) == "success"), "?")
    return live


def _retrain_run(client: AirflowClient, earlier: set[str]) -> str | None:
    """The ml_pipeline run the retrain request's asset event created (the scheduler starts it within seconds)."""
    deadline = time.monotonic() + RETRAIN_START_SECONDS
    while time.monotonic() < deadline:
        new = [r["dag_run_id"] for r in client.runs(DAG_ID) if r["dag_run_id"] not in earlier]
        if new:
            return str(new[0])
        time.sleep(1)
    say(f"no {DAG_ID} run started within {RETRAIN_START_SECONDS} s of the retrain request")
    return None


def _live_summary(live: LiveOutcome) -> None:
    print(f"  live traffic      : {live.traffic.summary()}")
    if live.record is None:
        print(f"  live monitoring   : {MONITORING_DAG_ID} run {live.run_id} {live.state}, no verdict recorded")
        return
    record = live.record
    score = record.get("live_score")
    shown = "none" if score is None else f"{score:.4f}"
    print(
        f"  live monitoring   : {MONITORING_DAG_ID} run {live.run_id}: verdict {record['verdict']}"
        f" (v{record['model_version']}, {record['predictions']} predictions, {record['with_feedback']} with feedback,"
        f" live {record['metric']} {shown} vs validation {record['validation_score']:.4f})"
    )
    for reason in record.get("reasons", [])[:6]:
        print(f"                      - {reason}")
    if live.retrain_run:
        print(f"  retrain requested : {DAG_ID} run {live.retrain_run} -> {live.retrain_branch}")


def _run_report(records: Path) -> Path | str:
    """The run's HTML report: the DAG's if it wrote one, else written now from the run's records."""
    from mlpipeline.cli.report import write_run_report

    existing = records / "report.html"
    if existing.exists():
        return existing
    try:
        return write_run_report(records)
    except Exception as exc:  # the summary goes on without it, saying why
        return f"not written ({type(exc).__name__}: {exc})"


def demo_variables(stack: LocalStack, environ: dict[str, str]) -> dict[str, str]:
    """The Variables the demo sets: DEMO_DATASET's, then every ``AIRFLOW_VAR_<NAME>`` of the environment over them."""
    variables = stack.dataset_variables(environ.get("DEMO_DATASET") or BUNDLED_DATASET)
    return {**variables, **variables_from_environment(environ)}


def main() -> int:
    stack = LocalStack(
        root=Path(os.environ.get("DEMO_DIR", REPO_ROOT / ".demo")),
        ports=Ports.from_env(),
        data_dir=Path(os.environ.get("DEMO_DATA_DIR", REPO_ROOT / "data")),
    )
    conf = json.loads(os.environ.get("DEMO_CONF") or "{}")
    timeout = float(os.environ.get("DEMO_TIMEOUT", "900"))
    try:
        stack.variables.update(demo_variables(stack, dict(os.environ)))
        overridden = sorted(variables_from_environment(os.environ))
        if overridden:
            say(f"Variables from the environment (AIRFLOW_VAR_*): {', '.join(overridden)}")
        say(f"data: {stack.pipeline_variables()['crawl_url']}")
        stack.check_ports()
        say(f"initialising Airflow (SQLite + LocalExecutor) in {stack.airflow_home}")
        stack.init_airflow()
        say("starting the bundled data source, the SMTP catcher and the model server")
        stack.start_services()
        say(f"starting Airflow: api-server {stack.api_url}, dag-processor, scheduler (logs in {stack.logs})")
        stack.start_airflow()
        client = AirflowClient(stack.api_url, "admin", stack.admin_password)
        client.wait_for_dag(DAG_ID)
        mail_before = len(read_mailbox(stack.mail_dir))
        run_id = client.trigger(DAG_ID, conf)
        say(f"triggered {DAG_ID} run {run_id} with conf {conf}")
        state = follow(client, run_id, timeout)
        states = client.task_states(DAG_ID, run_id)
        if state != "success":
            failed = [t for t, s in states.items() if s == "failed"]
            say(f"run {run_id} {state}; failed task(s): {failed}. Task logs: {stack.logs / 'airflow'}")
            return 1
        live = None
        if states.get("deploy_model") == "success":
            live = live_monitoring(stack, client, run_key(run_id), timeout)
            if live.state != "success":
                failed = [t for t, s in client.task_states(MONITORING_DAG_ID, live.run_id).items() if s == "failed"]
                say(f"{MONITORING_DAG_ID} run {live.run_id} {live.state}; failed task(s): {failed}")
                return 1
        summary(stack, run_id, states, mail_before, live)
        return 0
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        say("stopping the processes this demo started")
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
