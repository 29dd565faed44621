"""The monitor stage: probe the live endpoint, measure drift (the features, the target and the deployed model's
predictions, compared as the task says), record both, fail on ill health."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pandas as pd

from mlpipeline.config import DatasetSchema, PipelineConfig
from mlpipeline.stages.monitor.drift import DriftReport, FeatureDrift, outcome_kind, prediction_drift
from mlpipeline.stages.monitor.live import LiveChecks, probe_endpoint
from mlpipeline.stages.monitor.report import REPORT_FILE, MlflowRecord, MonitorError, MonitorReport
from mlpipeline.stages.monitor.tracking import record_to_mlflow
from mlpipeline.storage import DataLayout, atomic_write_json, run_key
from mlpipeline.tasks import task_of_target


def monitor(
    config: PipelineConfig,
    *,
    run: str,
    current_path: str,
    reference_path: str,
    holdout_path: str,
    expected_version: str | None = None,
) -> MonitorReport:
    """Check the live endpoint and the data drift, record both (MLflow + ``runs/<run>/monitor.json``).

    Raises :class:`MonitorError` (after recording) when the endpoint is unhealthy or monitoring could not run.
    """
    key = run_key(run)
    report_path = DataLayout.of(config.data_dir).run_records(key) / REPORT_FILE
    checked_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    monitoring_errors: list[str] = []

    holdout = _read_holdout(holdout_path, config.dataset_schema, monitoring_errors)
    live = LiveChecks(latency_budget_ms=config.monitor_latency_budget_ms)
    expected = _version_to_expect(config, None if expected_version is None else str(expected_version), live)
    probe_endpoint(config, holdout, expected, live)
    drift = _measure_drift(config, reference_path, current_path, holdout, expected, monitoring_errors)

    report = MonitorReport(
        run=key,
        checked_at=checked_at,
        serving_url=config.serving_url,
        model_name=config.registered_model_name,
        expected_version=expected,
        live=live,
        drift=drift,
        alerts=(*live.problems, *live.alerts, *drift.alerts(), *monitoring_errors),
        monitoring_errors=tuple(monitoring_errors),
        report_path=str(report_path),
        mlflow=MlflowRecord(config.mlflow_tracking_uri),
    )
    report = _recorded_to_mlflow(config, report)
    atomic_write_json(report_path, report.to_record())
    _raise_if_failed(report)
    return report


def _read(path: str, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise ValueError(f"cannot read the {what} data {path}: {type(exc).__name__}: {exc}") from exc


def _read_holdout(path: str, schema: DatasetSchema, monitoring_errors: list[str]) -> pd.DataFrame | None:
    """The held-out rows to send as live checks; None (and an error noted) when unusable."""
    try:
        holdout = _read(path, "held-out")
        missing = [c for c in [*schema.feature_names, schema.target] if c not in holdout.columns]
        if missing:
            raise ValueError(f"the held-out data {path} lacks column(s) {missing}")
        if holdout.empty:
            raise ValueError(f"the held-out data {path} has no rows to send as live checks")
    except ValueError as exc:
        monitoring_errors.append(str(exc))
        return None
    return holdout


def _version_to_expect(config: PipelineConfig, deployed: str | None, live: LiveChecks) -> str | None:
    """The version that must be live: ours, unless another run has deployed a newer champion since."""
    superseded = _superseded_by(config, deployed)
    if superseded is None:
        return deployed
    # Concurrent runs: what must be live is the newer champion; neither a failure of ours nor a reason to alarm.
    live.notes.append(
        f"version {deployed} deployed by this run was superseded by version {superseded}; "
        "monitored the live champion instead"
    )
    return superseded


def _superseded_by(config: PipelineConfig, expected_version: str | None) -> str | None:
    """The champion's version if a later deployment has replaced ``expected_version`` since, else None."""
    if expected_version is None:
        return None
    from mlpipeline.registry import champion_version, use_tracking

    champion = champion_version(use_tracking(config), config)
    if champion is None or int(champion.version) <= int(expected_version):
        return None
    return str(champion.version)


def _measure_drift(
    config: PipelineConfig,
    reference_path: str,
    current_path: str,
    holdout: pd.DataFrame | None,
    deployed_version: str | None,
    monitoring_errors: list[str],
) -> DriftReport:
    """Drift of every declared feature, the target and the deployed model's predictions; an empty report (and an
    error noted) when the data cannot be read."""
    thresholds = {"psi_threshold": config.drift_psi_threshold, "ks_pvalue": config.drift_ks_pvalue}
    try:
        reference, current = _read(reference_path, "reference"), _read(current_path, "current")
        task = task_of(config, current)
        drift = DriftReport.measure(
            reference,
            current,
            config.dataset_schema,
            **thresholds,
            reference_path=reference_path,
            current_path=current_path,
            task=task,
        )
    except ValueError as exc:
        monitoring_errors.append(f"drift could not be computed: {exc}")
        declared = None if config.task == "auto" else config.task
        return DriftReport(
            reference_path, current_path, config.drift_psi_threshold, config.drift_ks_pvalue, task=declared
        )
    if task is None:
        return drift
    return drift.with_predictions(
        _prediction_drift(config, task, reference, holdout, deployed_version, monitoring_errors)
    )


def task_of(config: PipelineConfig, current: pd.DataFrame) -> str | None:
    """The config's task; for an unresolved config (``auto``), what the ETL would decide from the current target
    column (None: no target column to decide from)."""
    if config.task != "auto":
        return config.task
    target = config.dataset_schema.target
    if target not in current:
        return None
    return task_of_target(current[target])


def _prediction_drift(
    config: PipelineConfig,
    task: str,
    reference: pd.DataFrame,
    holdout: pd.DataFrame | None,
    version: str | None,
    monitoring_errors: list[str],
) -> FeatureDrift:
    """The deployed model's (``version``, else the champion's) predictions on the reference rows vs the held-out
    rows; not compared, and a monitoring error noted, when the model cannot be loaded."""
    from mlpipeline.registry import champion_version, load_sklearn_model, use_tracking

    kind, name = outcome_kind(task), config.registered_model_name
    if holdout is None:  # why is noted already
        return FeatureDrift(kind, note="no held-out rows to predict on")
    try:
        if version is None:
            champion = champion_version(use_tracking(config), config)
            if champion is None:
                return FeatureDrift(kind, note=f"no {config.champion_alias!r} version of {name!r} to predict with")
            version = str(champion.version)
        model = load_sklearn_model(f"models:/{name}/{version}", tracking_uri=config.mlflow_tracking_uri)
    except Exception as exc:  # MLflow unreachable, a refused model: monitoring could not do this part of its job
        why = f"version {version} of {name!r} could not be loaded: {type(exc).__name__}: {exc}"
        monitoring_errors.append(f"prediction drift could not be computed: {why}")
        return FeatureDrift(kind, note=why)
    return prediction_drift(
        model,
        reference,
        holdout,
        config.dataset_schema,
        task,
        psi_threshold=config.drift_psi_threshold,
        ks_pvalue=config.drift_ks_pvalue,
        model_label=f"version {version} of {name!r}",
    )


def _recorded_to_mlflow(config: PipelineConfig, report: MonitorReport) -> MonitorReport:
    """``report`` with its MLflow run id, or with the failure to record it as an alert and a monitoring error."""
    try:
        run_id = record_to_mlflow(config, report)
    except Exception as exc:
        message = f"recording to MLflow at {config.mlflow_tracking_uri} failed: {type(exc).__name__}: {exc}"
        return replace(
            report,
            mlflow=replace(report.mlflow, error=message),
            alerts=(*report.alerts, message),
            monitoring_errors=(*report.monitoring_errors, message),
        )
    return replace(report, mlflow=replace(report.mlflow, run_id=run_id))


def _raise_if_failed(report: MonitorReport) -> None:
    problems = report.live.problems
    if problems or report.monitoring_errors:
        what = "the model endpoint is unhealthy" if problems else "monitoring could not complete"
        reasons = "; ".join([*problems, *report.monitoring_errors])
        raise MonitorError(f"{what}: {reasons} (report: {report.report_path})", report)
