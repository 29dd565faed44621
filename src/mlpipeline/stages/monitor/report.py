"""The monitor stage's typed report: live checks and drift (features, target, predictions), alerts, where it was
recorded.

:meth:`MonitorReport.to_dict` is the small summary that travels as an XCom value and fills the emails;
:meth:`MonitorReport.to_record` is the full report written to ``runs/<run>/monitor.json`` and logged to MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipeline.stages.monitor.drift import DriftReport, finite_or_none
from mlpipeline.stages.monitor.live import LiveChecks

REPORT_FILE = "monitor.json"


@dataclass(frozen=True)
class MlflowRecord:
    """Where the report was logged as an MLflow run (or why it could not be)."""

    tracking_uri: str
    run_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class MonitorReport:
    """What monitoring found. Healthy means the live checks found no problems; drift only adds alerts."""

    run: str
    checked_at: str
    serving_url: str
    model_name: str
    expected_version: str | None
    live: LiveChecks
    drift: DriftReport
    alerts: tuple[str, ...]
    monitoring_errors: tuple[str, ...]  # monitoring itself could not do its job (bad input, MLflow down)
    report_path: str
    mlflow: MlflowRecord

    @property
    def healthy(self) -> bool:
        return not self.live.problems

    @property
    def served_version(self) -> str | None:
        return self.live.served_version

    @property
    def requests(self) -> int:
        return self.live.requests

    @property
    def failures(self) -> int:
        return self.live.failures

    @property
    def latency_p50_ms(self) -> float | None:
        return _rounded(self.live.latency_percentile_ms(50), 3)

    @property
    def latency_p95_ms(self) -> float | None:
        return _rounded(self.live.latency_percentile_ms(95), 3)

    @property
    def live_accuracy(self) -> float | None:
        return _rounded(self.live.live_accuracy, 6)

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(self.drift.drifted_features)

    @property
    def max_psi(self) -> float | None:
        return _rounded(self.drift.max_psi, 6)

    @property
    def target_drifted(self) -> bool | None:
        return self.drift.target_drifted

    @property
    def predictions_drifted(self) -> bool | None:
        return self.drift.predictions_drifted

    @property
    def mlflow_run_id(self) -> str | None:
        return self.mlflow.run_id

    def to_dict(self) -> dict[str, Any]:
        """The summary: small and JSON-safe (an XCom value): lists, no NaN."""
        return {
            "healthy": self.healthy,
            "served_version": self.served_version,
            "expected_version": self.expected_version,
            "latency_p50_ms": finite_or_none(self.latency_p50_ms),
            "latency_p95_ms": finite_or_none(self.latency_p95_ms),
            "live_accuracy": finite_or_none(self.live_accuracy),
            "requests": self.requests,
            "failures": self.failures,
            "drifted_features": list(self.drifted_features),
            "max_psi": finite_or_none(self.max_psi),
            "task": self.drift.task,
            "target_drifted": self.target_drifted,  # None: not compared
            "predictions_drifted": self.predictions_drifted,
            "report_path": self.report_path,
            "alerts": list(self.alerts),
            "notes": list(self.live.notes),
            "mlflow_run_id": self.mlflow_run_id,
        }

    def to_record(self) -> dict[str, Any]:
        """The full report, as strict JSON (NaN/inf as null)."""
        record = {
            "run": self.run,
            "checked_at": self.checked_at,
            "serving_url": self.serving_url,
            "model_name": self.model_name,
            "healthy": self.healthy,
            "served_version": self.served_version,
            "expected_version": self.expected_version,
            "health": self.live.health,
            "live": self.live.to_dict(),
            "drift": self.drift.to_dict(),
            "problems": self.live.problems,
            "alerts": list(self.alerts),
            "notes": list(self.live.notes),
            "mlflow": {
                "tracking_uri": self.mlflow.tracking_uri,
                "run_id": self.mlflow.run_id,
                "error": self.mlflow.error,
            },
        }
        return _json_safe(record)


# Kept under its old name: callers and type hints written against the stage's earlier result class still work.
MonitorResult = MonitorReport


class MonitorError(RuntimeError):
    """The endpoint is unhealthy (or monitoring itself failed). The report was written; see ``result``."""

    def __init__(self, message: str, result: MonitorReport | None = None) -> None:
        super().__init__(message)
        self.result = result


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _json_safe(value: Any) -> Any:
    """Strict JSON for the report: NaN/inf -> null, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
