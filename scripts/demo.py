"""``make demo``: run ml_pipeline once, end to end, through Airflow's scheduler and executor on the embedded
stack (SQLite + LocalExecutor, MLflow on SQLite), then print what happened.

Environment: DEMO_CONF (JSON run conf, e.g. '{"accuracy_threshold": 0.99}'), DEMO_DIR (state, default .demo/),
DEMO_DATA_DIR (default data/), DEMO_*_PORT (see mlpipeline.dev.localstack.Ports), DEMO_TIMEOUT (seconds).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from mlpipeline.config import read_config
from mlpipeline.dev.localstack import REPO_ROOT, AirflowClient, LocalStack, Ports, StackError
from mlpipeline.dev.mailcatcher import read_mailbox
from mlpipeline.payload import json_rows
from mlpipeline.storage import DataLayout, read_json, run_key

DAG_ID = "ml_pipeline"
FINISHED = {"success", "failed"}


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def follow(client: AirflowClient, run_id: str, timeout: float) -> str:
    """Print each task's state changes until the run finishes; return the run's final state."""
    seen: dict[str, str | None] = {}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for task_id, state in client.task_states(DAG_ID, run_id).items():
            if state != seen.get(task_id) and state not in (None, "scheduled", "queued"):
                say(f"  {task_id:<15} {state}  (+{time.monotonic() - started:.0f} s)")
            seen[task_id] = state
        state = client.run_state(DAG_ID, run_id)
        if state in FINISHED:
            return state
        time.sleep(1)
    raise StackError(f"run {run_id} did not finish within {timeout:.0f} s")


def summary(stack: LocalStack, run_id: str, states: dict[str, str | None], mail_before: int) -> None:
    layout = DataLayout.of(stack.data_dir or "data")
    run = run_key(run_id)
    records = layout.run_records(run)
    manifest = read_json(layout.raw(run) / "manifest.json")
    branch = next((t for t in BRANCHES if states.get(t) == "success"), "?")
    print()
    print("=" * 78)
    print(f"ml_pipeline run {run_id}")
    print(f"  branch taken      : {branch}")
    holdout = _trained_summary(layout, run) if (records / "validate.json").exists() else _unchanged_summary(records)
    print(
        f"  raw snapshot      : {layout.raw(run)}  ({manifest['rows']} rows, sha256 {manifest['sha256'][:12]}…,"
        f" unchanged={manifest.get('unchanged')})"
    )
    _serving_summary(stack, records, holdout or _newest_holdout(layout))
    mails = read_mailbox(stack.mail_dir)[mail_before:]
    for message in mails:
        print(f"  email sent        : {message['subject']!r} to {message['to']}")
    if not mails:
        print("  email sent        : none")
    print(f"  mailbox           : {stack.mail_dir}")
    print(f"  Airflow           : {stack.api_url} (admin / see {stack.root / 'secrets.json'}), logs {stack.logs}")
    print("=" * 78)


# The tasks that end each branch of the DAG, in the order the summary looks for them.
BRANCHES = ("deploy_model", "retrain_alert", "report_unchanged")


def _trained_summary(layout: DataLayout, run: str) -> str:
    """The decision, the candidate and the data of a run that trained; returns the candidate's holdout path."""
    decision = read_json(layout.run_records(run) / "validate.json")
    train = read_json(layout.models(run) / decision["candidate"] / "train.json")
    etl = read_json(layout.processed(run) / "etl.json")
    print(f"  decision          : {'DEPLOY' if decision['deploy'] else 'KEEP CHAMPION'}")
    for reason in decision["reasons"]:
        print(f"                      - {reason}")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(train["metrics"].items()))
    print(f"  candidate {train['candidate']}: {metrics}")
    print(f"  threshold         : {decision['metric']} >= {decision['threshold']}")
    print(
        f"  processed data    : {etl['data_path']}  ({etl['rows_out']} rows, {etl['rows_quarantined']} quarantined"
        f" -> {etl['quarantine_path']})"
    )
    print(f"  model             : {train['model_uri']} (MLflow run {train['mlflow_run_id']})")
    return str(train["holdout_path"])


def _unchanged_summary(records: Path) -> None:
    check = read_json(records / "data_check.json")
    print("  decision          : NOTHING TO DO (nothing trained, nothing registered)")
    print(f"                      - {check['reason']}")
    print("                      (change a training setting, e.g. DEMO_CONF='{\"random_state\": 7}', to train anew)")


def _newest_holdout(layout: DataLayout) -> str | None:
    """Held-out rows of the newest trained run: rows in the shape the served model takes."""
    holdouts = sorted(layout.root.glob("models/*/*/holdout.parquet"), key=lambda path: path.stat().st_mtime)
    return str(holdouts[-1]) if holdouts else None


def _serving_summary(stack: LocalStack, records: Path, holdout: str | None) -> None:
    model = httpx.get(f"{stack.serving_url}/model", timeout=10)
    if model.status_code != 200:
        print(f"  serving           : no champion yet (HTTP {model.status_code})")
        return
    body = model.json()
    print(f"  serving           : {body['name']} v{body['version']} at {stack.serving_url}")
    if holdout is None:
        return
    features = read_config(str(records / "config.json")).dataset_schema.feature_names
    row = json_rows(pd.read_parquet(holdout, columns=features).head(1))
    answer = httpx.post(f"{stack.serving_url}/predict", json={"rows": row}, timeout=10).json()
    print(f"  one prediction    : POST /predict {json.dumps(row[0])[:90]}…")
    print(
        f"                      -> {answer.get('predictions')} p={answer.get('probabilities')}"
        f" (model v{answer.get('model_version')})"
    )


def main() -> int:
    stack = LocalStack(
        root=Path(os.environ.get("DEMO_DIR", REPO_ROOT / ".demo")),
        ports=Ports.from_env(),
        data_dir=Path(os.environ.get("DEMO_DATA_DIR", REPO_ROOT / "data")),
    )
    conf = json.loads(os.environ.get("DEMO_CONF") or "{}")
    timeout = float(os.environ.get("DEMO_TIMEOUT", "900"))
    try:
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
        summary(stack, run_id, states, mail_before)
        return 0
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        say("stopping the processes this demo started")
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
