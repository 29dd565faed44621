"""Where a live check is recorded: its JSON file, its rows for dashboards, the champion's MLflow run.

Each is safe to repeat for the same check (a task retry): the file is replaced atomically, the rows are deleted
and inserted again in one transaction, and the MLflow metrics carry the check's own time as step and timestamp
(MLflow keeps one point per key, step, timestamp and value)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from mlflow import MlflowClient
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine

from mlpipeline.config import PipelineConfig
from mlpipeline.prediction_store import monitoring_checks, monitoring_drift
from mlpipeline.stages.live.check import LiveCheck
from mlpipeline.stages.monitor.tracking import metric_safe_names
from mlpipeline.storage import atomic_write_json, local_path, run_key

MONITORING_DIR = "monitoring"
PREDICTION_FEATURE = "__prediction__"  # the model's answers, in monitoring_drift
METRIC_PREFIX = "live_"
_FEATURE_CHARS = 256  # monitoring_drift.feature


def record_path(config: PipelineConfig, check_id: str) -> str:
    return str(local_path(config.data_dir) / MONITORING_DIR / f"{run_key(check_id)}.json")


def record_check(config: PipelineConfig, engine: Engine, client: MlflowClient, check: LiveCheck) -> LiveCheck:
    """Write ``check`` everywhere it is read (see the module's doc); returns it with its record path."""
    check = replace(check, record_path=record_path(config, check.check_id))
    atomic_write_json(check.record_path, check.to_dict())
    write_rows(engine, check)
    log_to_mlflow(client, check)
    return check


def _drift_rows(check: LiveCheck) -> list[dict[str, Any]]:
    if check.drift is None:
        return []
    entries = dict(check.drift["features"])
    if check.drift.get("predictions") is not None:
        entries[PREDICTION_FEATURE] = check.drift["predictions"]
    return [
        {
            "check_id": check.check_id,
            "feature": name[:_FEATURE_CHARS],
            "psi": entry.get("psi"),
            "ks_pvalue": entry.get("ks_pvalue"),
            "drifted": int(bool(entry.get("drifted"))),
        }
        for name, entry in entries.items()
    ]


def write_rows(engine: Engine, check: LiveCheck) -> None:
    """This check's row in ``monitoring_checks`` and one per feature (and the answers) in ``monitoring_drift``,
    replacing any an earlier try wrote."""
    details = {
        "reasons": list(check.reasons),
        "notes": list(check.notes),
        "requests": check.requests,
        "live_metrics": check.live_metrics,
        "scored_rows": check.scored_rows,
        "sampled": check.sampled,
        "top_drift": check.top_drift,
        "score_tolerance": check.score_tolerance,
        "reference_uri": check.reference_uri,
        "record_path": check.record_path,
    }
    row = {
        "check_id": check.check_id,
        "checked_at": check.checked_at,
        "model_name": check.model_name,
        "model_version": check.model_version,
        "verdict": check.verdict,
        "window_start": check.window_start,
        "window_end": check.window_end,
        "predictions": check.predictions,
        "with_feedback": check.with_feedback,
        "metric": check.metric,
        "live_score": check.live_score,
        "validation_score": check.validation_score,
        "error_rate": check.requests.get("error_rate"),
        "latency_p95_ms": check.requests.get("latency_p95_ms"),
        "details": details,
    }
    with engine.begin() as connection:
        connection.execute(delete(monitoring_drift).where(monitoring_drift.c.check_id == check.check_id))
        connection.execute(delete(monitoring_checks).where(monitoring_checks.c.check_id == check.check_id))
        connection.execute(insert(monitoring_checks), [row])
        drift_rows = _drift_rows(check)
        if drift_rows:
            connection.execute(insert(monitoring_drift), drift_rows)


def live_metrics(check: LiveCheck) -> dict[str, float]:
    """The figures of ``check`` as MLflow metrics (``live_`` prefix; None and NaN left out)."""
    requests = check.requests
    values: dict[str, float | None] = {
        "predictions": float(check.predictions),
        "with_feedback": float(check.with_feedback),
        "requests": float(requests.get("requests") or 0),
        "error_rate": requests.get("error_rate"),
        "latency_p50_ms": requests.get("latency_p50_ms"),
        "latency_p95_ms": requests.get("latency_p95_ms"),
        "enough_traffic": float(check.verdict != "not_enough_traffic"),
    }
    if check.drift is not None:
        values["degraded"] = float(check.degraded)
        values["drifted_features"] = float(len(check.drift["drifted_features"]))
        values["max_psi"] = check.drift.get("max_psi")
        answers = check.drift.get("predictions") or {}
        values.update(prediction_psi=answers.get("psi"), prediction_ks_pvalue=answers.get("ks_pvalue"))
        features = check.drift["features"]
        for name, safe in metric_safe_names(list(features)).items():
            values[f"psi.{safe}"] = features[name].get("psi")
            values[f"ks_pvalue.{safe}"] = features[name].get("ks_pvalue")
    if check.live_score is not None:
        values["score"] = check.live_score
        values["score_gap"] = check.live_score - check.validation_score
        values.update({f"{name}": value for name, value in check.live_metrics.items()})
    return {
        f"{METRIC_PREFIX}{key}": float(value)
        for key, value in values.items()
        if value is not None and math.isfinite(value)
    }


def log_to_mlflow(client: MlflowClient, check: LiveCheck) -> None:
    """The figures on the champion's own run, at the check's time (step: epoch seconds), so the run's charts show
    how the version does live over its life."""
    from mlflow.entities import Metric, RunTag

    timestamp, step = int(check.window_end * 1000), int(check.window_end)
    metrics = [Metric(key, value, timestamp, step) for key, value in live_metrics(check).items()]
    tags = [RunTag("live_last_check", check.check_id), RunTag("live_last_verdict", check.verdict)]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(check.mlflow_run_id, metrics=metrics[start : start + 1000], tags=tags if start == 0 else [])
