"""``run``: the pipeline's stages in this one process, in the DAG's order, from the DAG's settings (a file and the
environment in place of the Airflow Variables): start → crawl → check → etl → train (each candidate) → validate →
deploy (if it passed) → monitor → report. For trying a dataset or a setting without Airflow; the records land
where the DAG's do (``<data_dir>/runs/<run>/``), so ``status`` and ``report`` read both alike."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from mlpipeline.cli.common import (
    CONFIG_HELP,
    EXIT_FAILED,
    EXIT_OK,
    add_config_arguments,
    cli_config,
    parse_assignments,
    refuse,
)
from mlpipeline.cli.progress import Progress, StageFailed
from mlpipeline.config import RUN_OVERRIDABLE_FIELDS, ConfigError, PipelineConfig
from mlpipeline.constants import SERVING_TOKEN_ENV
from mlpipeline.storage import DataLayout, atomic_write_json, run_key

if TYPE_CHECKING:
    from mlpipeline.stages.train import TrainResult
    from mlpipeline.stages.validate import ValidationDecision

log = logging.getLogger(__name__)

NO_DEPLOY_HELP = (
    "Stop after validation: nothing is registered, the champion alias and the model server are not touched (no"
    " model server needed). Without it a candidate that passes validation is deployed to serving_url, which must"
    f" answer and share {SERVING_TOKEN_ENV}; the run checks both before registering anything."
)


@dataclass
class RunOutcome:
    """How a run ended (without a failure): what was decided, and where to read about it."""

    run: str
    records: Path
    decision: str
    reasons: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    report_path: Path | None = None


def add_run_command(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="Run the whole pipeline once in this process (no Airflow) and print the decision and the report.",
        description="Run ml_pipeline's stages one after another in this process: crawl, check (unchanged data and"
        " training settings stop here), etl, train each candidate, validate, deploy if it passed, monitor, report."
        " Records go to <data_dir>/runs/<run>/ as the DAG's do. " + CONFIG_HELP + " Exit codes: 0 the run ended"
        " (deployed, champion kept, nothing to do, or stopped by --no-deploy), 1 a stage failed (its error is"
        " printed), 2 bad settings or arguments.",
    )
    add_config_arguments(run)
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Change one training or judging setting for this run, like a run's conf in Airflow (JSON values;"
        f" repeatable). Allowed: {', '.join(sorted(RUN_OVERRIDABLE_FIELDS))}.",
    )
    run.add_argument("--no-deploy", action="store_true", help=NO_DEPLOY_HELP)
    run.add_argument(
        "--run-id",
        default=None,
        help="Name of the run (default cli__<UTC time>). Giving an earlier run's name resumes it: each stage is"
        " safe to repeat and reuses what it finished.",
    )
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from mlpipeline.stages.train import check_candidates

    try:
        config = cli_config(args.config, parse_assignments(args.set))
        check_candidates(config)
        run = run_key(args.run_id or "cli__" + datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    except (ConfigError, ValueError) as exc:
        return refuse(str(exc))
    progress = Progress()
    print(f"ml_pipeline run {run}: {config.crawl_url} -> {DataLayout.of(config.data_dir).root}", flush=True)
    try:
        outcome = run_pipeline(config, run, progress, deploy=not args.no_deploy)
    except StageFailed as failed:
        if args.verbose:
            traceback.print_exception(failed.cause)
        records = DataLayout.of(config.data_dir).run_records(run)
        print(f"error: {failed.stage} failed: {_message(failed.cause)}", file=sys.stderr)
        print(f"records : {records}")
        return EXIT_FAILED
    print_outcome(outcome)
    return EXIT_OK


def _message(exc: BaseException) -> str:
    """The error on one line; its type too when it is not one of the pipeline's own, self-explaining errors."""
    text = " ".join(str(exc).split()) or repr(exc)
    own = type(exc).__module__.startswith("mlpipeline")
    return text if own else f"{type(exc).__name__}: {text}"


def print_outcome(outcome: RunOutcome) -> None:
    print()
    print(f"decision : {outcome.decision}")
    for reason in outcome.reasons:
        print(f"           - {reason}")
    for alert in outcome.alerts:
        print(f"alert    : {alert}")
    print(f"report   : {outcome.report_path if outcome.report_path else 'not written'}")
    print(f"records  : {outcome.records}")


def run_pipeline(config: PipelineConfig, run: str, progress: Progress, *, deploy: bool) -> RunOutcome:
    """Every stage of ml_pipeline, in order; StageFailed names the one that failed."""
    from mlpipeline.stages.crawl import crawl
    from mlpipeline.stages.validate import check_data

    records = DataLayout.of(config.data_dir).run_records(run)
    progress.step("start", lambda: _freeze(config, records / "config.json"), lambda path: f"settings in {path}")
    crawled = progress.step(
        "crawl", lambda: crawl(config, run), lambda c: f"{c.rows} rows, {c.bytes} bytes, sha256 {c.sha256[:12]}…"
    )
    check = progress.step("check", lambda: check_data(config, run=run, data_sha256=crawled.sha256), lambda c: c.reason)
    if check.unchanged:
        outcome = RunOutcome(run, records, "NOTHING TO DO: nothing trained, nothing registered", [check.reason])
    else:
        outcome = _train_and_judge(config, run, progress, crawled.data_path, crawled.format, crawled.sha256, deploy)
    outcome.report_path = progress.step("report", lambda: _report(config, run), str)
    return outcome


def _freeze(config: PipelineConfig, path: Path) -> Path:
    atomic_write_json(path, json.loads(config.model_dump_json()))
    return path


def _report(config: PipelineConfig, run: str) -> Path:
    from mlpipeline.stages.report import build_report  # matplotlib: imported only once it is needed

    return build_report(config, run=run)


def _train_and_judge(
    config: PipelineConfig, run: str, progress: Progress, raw_path: str, raw_format: str, sha256: str, deploy: bool
) -> RunOutcome:
    from mlpipeline.stages.etl import etl, resolved_config
    from mlpipeline.stages.train import train
    from mlpipeline.stages.validate import select_best, validate

    records = DataLayout.of(config.data_dir).run_records(run)
    cleaned = progress.step(
        "etl",
        lambda: etl(config, run=run, raw_data_path=raw_path, raw_format=raw_format),
        lambda e: f"{e.rows_out} rows ({e.rows_quarantined} quarantined), task {e.task}",
    )
    config = resolved_config(config, cleaned)
    _freeze(config, records / "config.resolved.json")  # what the DAG's later tasks read: the columns are known
    trained = [
        progress.step(
            f"train {candidate.name}",
            lambda candidate=candidate: train(
                config, run=run, processed_data_path=cleaned.data_path, data_sha256=sha256, candidate=candidate
            ),
            lambda t: ", ".join(f"{k} {v:.4f}" for k, v in sorted(t.metrics.items()) if k == config.validation_metric),
        )
        for candidate in config.training_candidates()
    ]

    def judge():  # type: ignore[no-untyped-def]
        best, ranking = select_best(trained, config.validation_metric)
        return best, validate(config, run=run, candidate=best, ranking=ranking)

    best, decision = progress.step("validate", judge, lambda d: "passed" if d[1].deploy else "rejected")
    for reason in decision.reasons:
        progress.note(reason)
    if not decision.deploy:
        champion = f"v{decision.champion_version}" if decision.champion_version else "none yet"
        return RunOutcome(run, records, f"KEEP CHAMPION ({champion}): {best.candidate} rejected", decision.reasons)
    if not deploy:
        progress.skip("deploy", "--no-deploy (nothing registered; the champion and the endpoint are untouched)")
        progress.skip("monitor", "nothing deployed")
        return RunOutcome(run, records, f"PASSED, NOT DEPLOYED (--no-deploy): {best.candidate}", decision.reasons)
    return _deploy_and_monitor(config, run, progress, best, decision)


def _deploy_and_monitor(
    config: PipelineConfig, run: str, progress: Progress, best: TrainResult, decision: ValidationDecision
) -> RunOutcome:
    from mlpipeline.stages.deploy import deploy
    from mlpipeline.stages.monitor import monitor

    def deploy_checked():  # type: ignore[no-untyped-def]
        require_endpoint(config)
        return deploy(config, run=run, candidate=best, decision=decision)

    deployed = progress.step(
        "deploy",
        deploy_checked,
        lambda d: f"{d.model_name} v{d.version} live at {d.serving_url} (replacing {d.previous_version or 'none'})",
    )
    monitored = progress.step(
        "monitor",
        lambda: monitor(
            config,
            run=run,
            current_path=best.processed_data_path,
            reference_path=deployed.reference_data_path or best.processed_data_path,
            holdout_path=best.holdout_path,
            expected_version=deployed.version,
        ).to_dict(),
        lambda m: f"healthy, {len(m['alerts'])} alert(s)",
    )
    for alert in monitored["alerts"]:
        progress.note(alert)
    decision_text = f"DEPLOYED {deployed.model_name} v{deployed.version} at {deployed.serving_url}"
    return RunOutcome(
        run, DataLayout.of(config.data_dir).run_records(run), decision_text, decision.reasons, list(monitored["alerts"])
    )


def require_endpoint(config: PipelineConfig) -> None:
    """Before anything is registered: the model server answers and the serving token is set (deploy needs both
    to make the endpoint load the new version; without them it would register, move the alias, then roll back)."""
    from mlpipeline.stages.deploy import DeployError

    hint = "or run with --no-deploy to stop after validation; nothing was registered"
    if not os.environ.get(SERVING_TOKEN_ENV):
        raise DeployError(f"{SERVING_TOKEN_ENV} is not set: the model server's /reload needs it ({hint})")
    try:
        httpx.get(f"{config.serving_url}/live", timeout=min(config.serving_timeout_seconds, 10)).raise_for_status()
    except httpx.HTTPError as exc:
        raise DeployError(
            f"the model server at {config.serving_url} does not answer ({type(exc).__name__}: {exc}): start it"
            f" (python -m mlpipeline.serving) with the same MLflow tracking URI, model name and {SERVING_TOKEN_ENV},"
            f" {hint}"
        ) from None
