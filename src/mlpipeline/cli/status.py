"""``status``: which model serves (the registry's champion alias), how it scored, and what the last runs decided,
read from the registry and from the runs' records under ``<data_dir>/runs/`` (the DAG's and ``run``'s alike)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlpipeline.cli.common import CONFIG_HELP, EXIT_FAILED, EXIT_OK, add_config_arguments, cli_config, refuse
from mlpipeline.config import ConfigError, PipelineConfig
from mlpipeline.storage import DataLayout

DEFAULT_RUNS_SHOWN = 10


def add_status_command(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser(
        "status",
        help="The champion (version, metrics, validation score) and the last runs with their decisions.",
        description="Show the version the champion alias points at in the MLflow registry, its metrics and the score"
        " its validation gave it, and the newest runs under <data_dir>/runs/ with what each decided. " + CONFIG_HELP,
    )
    add_config_arguments(status)
    status.add_argument(
        "-n", "--runs", type=int, default=DEFAULT_RUNS_SHOWN, help=f"How many runs (default {DEFAULT_RUNS_SHOWN})."
    )
    status.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    status.set_defaults(handler=status_command)


def status_command(args: argparse.Namespace) -> int:
    if args.runs < 0:
        return refuse(f"--runs must be 0 or more, got {args.runs}")
    try:
        config = cli_config(args.config)
    except ConfigError as exc:
        return refuse(str(exc))
    try:
        champion = champion_status(config)
    except Exception as exc:  # MLflow unreachable or refusing: say so, the runs below are still worth showing
        champion = {"error": f"cannot read the registry at {config.mlflow_tracking_uri}: {type(exc).__name__}: {exc}"}
    root = DataLayout.of(config.data_dir).root
    runs = recent_runs(root / "runs", args.runs)
    live = last_live_check(root / "monitoring")
    if args.json:
        print(json.dumps({"champion": champion, "live_check": live, "runs": runs}, indent=2))
    else:
        print_status(config, champion, runs)
        print_live_check(live)
    return EXIT_FAILED if champion and "error" in champion else EXIT_OK


def champion_status(config: PipelineConfig) -> dict[str, Any] | None:
    """The champion version's registry facts, its MLflow run's metrics and its validation record; None: no champion."""
    from mlpipeline.registry import champion_version, use_tracking

    client = use_tracking(config)
    version = champion_version(client, config)
    if version is None:
        return None
    tags = dict(version.tags or {})
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    pipeline_run = tags.get("pipeline_run")
    validation = (
        _read(DataLayout.of(config.data_dir).run_records(pipeline_run) / "validate.json") if pipeline_run else None
    )
    return {
        "model_name": config.registered_model_name,
        "alias": config.champion_alias,
        "version": str(version.version),
        "mlflow_run_id": version.run_id,
        "pipeline_run": pipeline_run,
        "candidate": tags.get("candidate"),
        "deployed_at": tags.get("deployed_at"),
        "metrics": {name: value for name, value in sorted(metrics.items()) if math.isfinite(value)},
        "validation": None
        if validation is None
        else {key: validation.get(key) for key in ("metric", "candidate_score", "threshold", "champion_version")},
    }


def recent_runs(runs_dir: Path, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most recently written runs' records, newest first, each with what it decided."""
    if not runs_dir.is_dir():
        return []
    directories = [path for path in runs_dir.iterdir() if path.is_dir()]
    directories.sort(key=_last_written, reverse=True)
    return [run_decision(path) for path in directories[:limit]]


def _last_written(directory: Path) -> float:
    return max((item.stat().st_mtime for item in directory.iterdir()), default=directory.stat().st_mtime)


def run_decision(records: Path) -> dict[str, Any]:
    """What a run decided, from the records its stages left (the last stage that wrote one speaks)."""
    deployed, decision = _read(records / "deploy.json"), _read(records / "validate.json")
    check = _read(records / "data_check.json")
    if deployed:
        text = f"deployed v{deployed['version']} (replacing {deployed.get('previous_version') or 'none'})"
    elif decision and not decision.get("deploy"):
        text = f"kept the champion (v{decision.get('champion_version')})" if decision.get("champion_version") else ""
        text = text or "rejected (no champion)"
    elif decision:
        started = (records / "deploy_intent.json").exists()
        text = "passed; deploy failed or still running" if started else "passed; not deployed"
    elif check and check.get("unchanged"):
        text = "unchanged data and training: nothing trained"
    else:
        text = "in progress or failed before validation"
    score = None
    if decision and isinstance(decision.get("candidate_score"), (int, float)):
        score = {"metric": decision.get("metric"), "value": decision["candidate_score"]}
    written = datetime.fromtimestamp(_last_written(records), timezone.utc).isoformat(timespec="seconds")
    report = records / "report.html"
    return {
        "run": records.name,
        "updated": written,
        "decision": text,
        "score": score,
        "report": str(report) if report.exists() else None,
    }


def last_live_check(monitoring_dir: Path) -> dict[str, Any] | None:
    """The newest live check's verdict (``model_monitoring``'s records under ``<data_dir>/monitoring/``)."""
    records = sorted(monitoring_dir.glob("*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
    for path in records:
        record = _read(path)
        if record and "verdict" in record:
            keys = ("check_id", "checked_at", "model_version", "verdict", "reasons", "metric", "live_score")
            return {key: record.get(key) for key in keys} | {"record": str(path)}
    return None


def print_live_check(live: dict[str, Any] | None) -> None:
    if live is None:
        print("live     : no live check yet (model_monitoring records under <data_dir>/monitoring/)")
        return
    when = datetime.fromtimestamp(float(live["checked_at"] or 0), timezone.utc).isoformat(timespec="seconds")
    print(f"live     : {live['verdict']} (v{live['model_version']}, checked {when}, {live['record']})")
    for reason in (live.get("reasons") or [])[:5]:
        print(f"           - {reason}")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def print_status(config: PipelineConfig, champion: dict[str, Any] | None, runs: list[dict[str, Any]]) -> None:
    name = f"{config.registered_model_name}@{config.champion_alias}"
    if champion is None:
        print(f"champion : none ({name} is not set: no model has been deployed)")
    elif "error" in champion:
        print(f"champion : unknown: {champion['error']}", file=sys.stderr)
    else:
        print(
            f"champion : {name} = v{champion['version']} (run {champion['pipeline_run']}, candidate"
            f" {champion['candidate']}, deployed {champion['deployed_at'] or 'never recorded'})"
        )
        shown = ", ".join(f"{k} {v:.4f}" for k, v in champion["metrics"].items())
        print(f"metrics  : {shown or 'none logged'}")
        validation = champion["validation"]
        if validation and isinstance(validation.get("candidate_score"), (int, float)):
            bar = validation.get("threshold")
            print(f"validated: {validation['metric']} {validation['candidate_score']:.4f} (bar {bar})")
        else:
            print("validated: no validation record under data_dir")
    print(f"runs     : {len(runs)} newest under {DataLayout.of(config.data_dir).root / 'runs'}")
    for run in runs:
        score = f"  {run['score']['metric']} {run['score']['value']:.4f}" if run["score"] else ""
        print(f"  {run['updated']}  {run['run']}  {run['decision']}{score}")
