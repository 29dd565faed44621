"""Recording a monitor report as a run of the ``<experiment>_monitoring`` MLflow experiment."""

from __future__ import annotations

import math
import posixpath
import re
import time
from typing import TYPE_CHECKING

from mlpipeline.config import PipelineConfig
from mlpipeline.stages.monitor.report import MonitorReport

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param

_UNSAFE_IN_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
# MLflow keys are at most 250 characters: room for the prefix and a de-duplicating suffix.
_MAX_NAME_CHARS = 200


def record_to_mlflow(config: PipelineConfig, report: MonitorReport) -> str:
    """Log ``report`` (metrics, parameters, the report and drift as artifacts); returns the MLflow run id."""
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from mlpipeline.registry import ensure_experiment

    # An explicit client, not the process-global fluent API: nothing leaks into other stages in this process.
    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri, registry_uri=config.mlflow_tracking_uri)
    experiment_id = ensure_experiment(client, f"{config.mlflow_experiment}_monitoring", config.mlflow_artifact_location)
    mlflow_run = client.create_run(
        experiment_id,
        run_name=f"monitor-{report.run}",
        tags={"pipeline_run": report.run, "served_version": str(report.served_version), "healthy": str(report.healthy)},
    )
    run_id = mlflow_run.info.run_id
    try:
        client.log_batch(
            run_id,
            metrics=_metrics(report),
            params=_params(config, report),
            tags=[RunTag("mlpipeline.stage", "monitor")],
        )
        record = report.to_record()
        client.log_dict(run_id, record["drift"], "drift_report.json")
        client.log_dict(run_id, record, "monitor_report.json")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED" if report.healthy else "FAILED")
    return run_id


def _metrics(report: MonitorReport) -> list[Metric]:
    from mlflow.entities import Metric

    live, drift = report.live, report.drift
    values: dict[str, float | None] = {
        "healthy": float(report.healthy),
        "requests": float(live.requests),
        "failures": float(live.failures),
        "latency_p50_ms": live.latency_percentile_ms(50),
        "latency_p95_ms": live.latency_percentile_ms(95),
        "live_accuracy": live.live_accuracy,
        "max_psi": drift.max_psi,
        "drifted_features": float(len(drift.drifted_features)),
    }
    for prefix, outcome, drifted in (
        ("target", drift.target, drift.target_drifted),
        ("predictions", drift.predictions, drift.predictions_drifted),
    ):
        if outcome is not None and drifted is not None:
            values.update({f"{prefix}_psi": outcome.psi, f"{prefix}_ks_pvalue": outcome.ks_pvalue})
            values[f"{prefix}_drifted"] = float(drifted)
    for name, safe in metric_safe_names(list(drift.features)).items():
        feature = drift.features[name]
        values[f"psi.{safe}"] = feature.psi
        values[f"ks_pvalue.{safe}"] = feature.ks_pvalue
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and math.isfinite(v)]


def metric_safe_names(names: list[str]) -> dict[str, str]:
    """Each column name as MLflow accepts it in a metric name, no two alike.

    MLflow allows only letters, digits and ``_-. /`` and refuses a name that is not its own normalised path (``a//b``,
    ``a/``, ``a/../b``); column names may hold anything. Distinct columns that sanitize alike get ``_2``, ``_3``...
    """
    safe_names: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        safe = _UNSAFE_IN_METRIC_NAME.sub("_", name)[:_MAX_NAME_CHARS]
        if posixpath.normpath(f"x.{safe}") != f"x.{safe}":
            safe = safe.replace("/", "_")
        candidate, n = safe, 1
        while candidate in taken:
            n += 1
            candidate = f"{safe}_{n}"
        taken.add(candidate)
        safe_names[name] = candidate
    return safe_names


def _params(config: PipelineConfig, report: MonitorReport) -> list[Param]:
    from mlflow.entities import Param

    return [
        Param("serving_url", config.serving_url),
        Param("task", str(report.drift.task)),
        Param("expected_version", str(report.expected_version)),
        Param("monitor_requests", str(config.monitor_requests)),
        Param("psi_threshold", str(config.drift_psi_threshold)),
        Param("ks_pvalue_threshold", str(config.drift_ks_pvalue)),
    ]
