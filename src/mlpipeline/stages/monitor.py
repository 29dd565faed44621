"""Monitor stage: is the live endpoint healthy and serving the deployed version, and has the data drifted?

Health problems (endpoint down, failing or slow live predictions, wrong version) raise :class:`MonitorError` after
the report is written; drift only adds alerts, which the DAG emails.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd
from scipy import stats

from mlpipeline.config import ColumnType, DatasetSchema, PipelineConfig
from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.payload import json_rows
from mlpipeline.storage import DataLayout, atomic_write_json, run_key

REPORT_FILE = "monitor.json"
# Floor for empty bins: keeps PSI finite (log of 0) while still heavily penalising a bin that emptied or filled.
PSI_EPSILON = 1e-4
_MISSING = "<missing>"
_MAX_ERRORS_KEPT = 10
# Batch and single-row answers must agree to this (different BLAS paths may differ in the last bits).
_BATCH_TOLERANCE = 1e-6


class MonitorError(RuntimeError):
    """The endpoint is unhealthy (or monitoring itself failed). The report was written; see ``result``."""

    def __init__(self, message: str, result: MonitorResult | None = None) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------------------------------------------
# Drift statistics (pure functions).
# --------------------------------------------------------------------------------------------------------------


def _psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    p = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    q = np.maximum(current_counts / max(current_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def _as_float(values: Any) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def population_stability_index(reference: Any, current: Any, bins: int = 10) -> float:
    """PSI of a numeric feature: quantile bins of ``reference`` (plus one bin for missing values).

    Rule of thumb: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    ref, cur = _as_float(reference), _as_float(current)
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("PSI needs at least one reference and one current value")
    ref_valid, cur_valid = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    # Interior cut points at reference quantiles; ties (discrete data) collapse into fewer, wider bins.
    edges = np.unique(np.quantile(ref_valid, np.linspace(0, 1, bins + 1)[1:-1])) if len(ref_valid) else np.array([])
    n_bins = len(edges) + 1

    def counts(valid: np.ndarray, total: int) -> np.ndarray:
        binned = np.bincount(np.searchsorted(edges, valid, side="right"), minlength=n_bins).astype(np.float64)
        return np.append(binned, total - len(valid))  # the missing-value bin

    return _psi(counts(ref_valid, len(ref)), counts(cur_valid, len(cur)))


def _category_labels(values: Any) -> pd.Series:
    series = pd.Series(values, dtype=object)
    return series.where(series.notna(), _MISSING).astype(str)


def categorical_psi(reference: Any, current: Any) -> float:
    """PSI over the union of categories (missing values are a category of their own)."""
    ref, cur = _category_labels(reference), _category_labels(current)
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("PSI needs at least one reference and one current value")
    categories = sorted(set(ref) | set(cur))
    ref_counts = ref.value_counts().reindex(categories, fill_value=0).to_numpy(dtype=np.float64)
    cur_counts = cur.value_counts().reindex(categories, fill_value=0).to_numpy(dtype=np.float64)
    return _psi(ref_counts, cur_counts)


def ks_test(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test on the non-missing values: (statistic, p-value); NaN if a side is empty."""
    ref, cur = _as_float(reference), _as_float(current)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return math.nan, math.nan
    result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def _booleans_as_labels(values: pd.Series) -> pd.Series:
    """True/False/1/0/"true"/... -> "true"/"false"; anything else missing."""

    def label(value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            return "true" if text in TRUE_TOKENS else "false" if text in FALSE_TOKENS else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return "true" if bool(value) else "false"

    return values.map(label)


def _days(values: pd.Series) -> np.ndarray:
    when = pd.to_datetime(values, errors="coerce", utc=True)
    return ((when - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(days=1)).to_numpy(
        dtype=np.float64, na_value=np.nan
    )


_KIND: dict[ColumnType, str] = {
    "numeric": "numeric",
    "integer": "numeric",
    "categorical": "categorical",
    "boolean": "boolean",
    "date": "date",
}


def _mean(values: np.ndarray) -> float | None:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if len(valid) else None


def _missing_fraction(values: Any) -> float:
    return float(pd.isna(pd.Series(values)).mean()) if len(values) else math.nan


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: DatasetSchema,
    psi_threshold: float = 0.2,
    ks_pvalue: float = 0.01,
) -> dict[str, dict[str, Any]]:
    """Per declared feature: ``{kind, psi, ks_statistic/ks_pvalue (numeric and date), drifted, ...}``.

    A feature drifts when PSI > ``psi_threshold`` or (numeric/date) the KS p-value < ``ks_pvalue``. Dates are
    compared as days since 1970-01-01. A feature absent from either frame is reported, not compared.
    """
    report: dict[str, dict[str, Any]] = {}
    for column in schema.columns:
        kind = _KIND[column.type]
        entry: dict[str, Any] = {"kind": kind, "psi": None, "drifted": False}
        absent = [side for side, frame in (("reference", reference), ("current", current)) if column.name not in frame]
        if absent or len(reference) == 0 or len(current) == 0:
            entry["note"] = f"missing from the {' and '.join(absent)} data" if absent else "no rows to compare"
            report[column.name] = entry
            continue
        ref, cur = reference[column.name], current[column.name]
        entry["missing_reference"] = _missing_fraction(ref)
        entry["missing_current"] = _missing_fraction(cur)
        if kind in ("numeric", "date"):
            ref_values = _days(ref) if kind == "date" else _as_float(ref)
            cur_values = _days(cur) if kind == "date" else _as_float(cur)
            entry["psi"] = population_stability_index(ref_values, cur_values)
            entry["ks_statistic"], entry["ks_pvalue"] = ks_test(ref_values, cur_values)
            entry["mean_reference"], entry["mean_current"] = _mean(ref_values), _mean(cur_values)
            if kind == "date":
                entry["note"] = "compared as days since 1970-01-01"
            # NaN (an all-missing side) compares False: no KS verdict then, PSI still sees the missing values.
            entry["drifted"] = bool(entry["psi"] > psi_threshold or entry["ks_pvalue"] < ks_pvalue)
        else:
            ref_labels = _booleans_as_labels(ref) if kind == "boolean" else ref
            cur_labels = _booleans_as_labels(cur) if kind == "boolean" else cur
            entry["psi"] = categorical_psi(ref_labels, cur_labels)
            seen = set(_category_labels(ref_labels))
            new = sorted(set(_category_labels(cur_labels)) - seen)
            if new:
                entry["new_categories"] = new[:20]
            entry["drifted"] = bool(entry["psi"] > psi_threshold)
        report[column.name] = {k: _nan_to_none(v) for k, v in entry.items()}
    return report


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --------------------------------------------------------------------------------------------------------------
# Live checks against the endpoint.
# --------------------------------------------------------------------------------------------------------------


def _label_key(value: Any) -> str:
    """Compare labels across JSON and pandas types: 1, 1.0, True and "1" are the same class."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class _LiveCheck:
    health: dict[str, Any] | None = None
    served_version: str | None = None
    requests: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    correct: int = 0
    scored: int = 0
    batch: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures += 1
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)


def _check_answer(response: httpx.Response, rows: int, version: str | None) -> dict[str, Any]:
    """The parsed body of a good /predict answer; raises ValueError describing what is wrong."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    predictions, probabilities = body.get("predictions"), body.get("probabilities")
    if not isinstance(predictions, list) or len(predictions) != rows:
        raise ValueError(f"expected {rows} prediction(s), got {str(predictions)[:200]}")
    if not isinstance(probabilities, list) or len(probabilities) != rows:
        raise ValueError(f"expected {rows} probabilities, got {str(probabilities)[:200]}")
    if not all(isinstance(p, (int, float)) and 0.0 <= p <= 1.0 for p in probabilities):
        raise ValueError(f"probabilities outside [0, 1]: {str(probabilities)[:200]}")
    if version is not None and str(body.get("model_version")) != version:
        raise ValueError(f"answered by version {body.get('model_version')}, not {version}")
    return body


def _live_checks(
    config: PipelineConfig, holdout: pd.DataFrame | None, expected_version: str | None, live: _LiveCheck
) -> None:
    url = config.serving_url
    schema = config.dataset_schema
    timeout = httpx.Timeout(config.serving_timeout_seconds, connect=min(10.0, config.serving_timeout_seconds))
    with httpx.Client(base_url=url, timeout=timeout) as http:
        try:
            response = http.get("/health")
        except httpx.HTTPError as exc:
            live.problems.append(
                f"model endpoint {url} is unreachable ({type(exc).__name__}: {exc}); start the model server "
                "(python -m mlpipeline.serving) or fix serving_url"
            )
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        live.health = body if isinstance(body, dict) else {"raw": response.text[:500]}
        if response.status_code != 200:
            live.problems.append(
                f"model endpoint {url}/health answered HTTP {response.status_code} "
                f"({str(live.health)[:300]}); is a champion registered and loadable?"
            )
            return
        live.served_version = None if live.health.get("model_version") is None else str(live.health["model_version"])
        if live.health.get("status") == "degraded":
            live.alerts.append(f"endpoint is degraded: {live.health.get('last_error')}")
        if expected_version is not None and live.served_version != str(expected_version):
            live.problems.append(
                f"endpoint serves version {live.served_version} but version {expected_version} was deployed; "
                f"POST {url}/reload and check the server log"
            )
        if holdout is None or holdout.empty:
            return  # recorded by the caller as a monitoring (not endpoint) failure

        # Live checks: a seeded sample of held-out rows, one row per request, then all of them in one request.
        order = np.random.default_rng(config.random_state).permutation(len(holdout))
        picks = np.resize(order, config.monitor_requests)  # cycles when there are fewer rows than requests
        sample = holdout.iloc[picks].reset_index(drop=True)
        rows = json_rows(sample[schema.feature_names])
        truth = [_label_key(v) for v in sample[schema.target]]
        singles: list[dict[str, Any] | None] = []
        for row, label in zip(rows, truth, strict=True):
            live.requests += 1
            started = time.perf_counter()
            try:
                response = http.post("/predict", json={"rows": [row]})
                live.latencies_ms.append((time.perf_counter() - started) * 1000)
                body = _check_answer(response, 1, live.served_version)
            except (httpx.HTTPError, ValueError) as exc:
                live.fail(f"single-row check: {type(exc).__name__}: {exc}")
                singles.append(None)
                continue
            singles.append(body)
            live.scored += 1
            live.correct += int(_label_key(body["predictions"][0]) == label)

        live.requests += 1
        started = time.perf_counter()
        try:
            response = http.post("/predict", json={"rows": rows})
            live.batch["latency_ms"] = (time.perf_counter() - started) * 1000
            body = _check_answer(response, len(rows), live.served_version)
        except (httpx.HTTPError, ValueError) as exc:
            live.fail(f"batch check ({len(rows)} rows): {type(exc).__name__}: {exc}")
            live.batch["ok"] = False
        else:
            # The same rows must get the same answers alone and in a batch.
            disagree = [
                i
                for i, single in enumerate(singles)
                if single is not None
                and (
                    _label_key(single["predictions"][0]) != _label_key(body["predictions"][i])
                    or abs(single["probabilities"][0] - body["probabilities"][i]) > _BATCH_TOLERANCE
                )
            ]
            live.batch.update(rows=len(rows), disagreements=len(disagree))
            live.batch["ok"] = not disagree
            if disagree:
                live.fail(f"batch and single-row answers disagree on {len(disagree)} of {len(rows)} rows")

    if live.failures:
        live.problems.append(
            f"{live.failures} of {live.requests} live prediction checks failed (first: {live.errors[0]})"
        )
    if live.latencies_ms:
        p95 = float(np.percentile(live.latencies_ms, 95))
        if p95 > config.monitor_latency_budget_ms:
            live.problems.append(
                f"latency p95 {p95:.1f} ms exceeds the budget of {config.monitor_latency_budget_ms:g} ms "
                f"(p50 {float(np.percentile(live.latencies_ms, 50)):.1f} ms over {len(live.latencies_ms)} requests)"
            )


# --------------------------------------------------------------------------------------------------------------
# The stage.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorResult:
    healthy: bool
    served_version: str | None
    expected_version: str | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    live_accuracy: float | None
    requests: int
    failures: int
    drifted_features: tuple[str, ...]
    max_psi: float | None
    report_path: str
    alerts: tuple[str, ...]
    mlflow_run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """Small and JSON-safe (an XCom value): lists, no NaN."""
        return {
            "healthy": self.healthy,
            "served_version": self.served_version,
            "expected_version": self.expected_version,
            "latency_p50_ms": _nan_to_none(self.latency_p50_ms),
            "latency_p95_ms": _nan_to_none(self.latency_p95_ms),
            "live_accuracy": _nan_to_none(self.live_accuracy),
            "requests": self.requests,
            "failures": self.failures,
            "drifted_features": list(self.drifted_features),
            "max_psi": _nan_to_none(self.max_psi),
            "report_path": self.report_path,
            "alerts": list(self.alerts),
            "mlflow_run_id": self.mlflow_run_id,
        }


def _read(path: str, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise ValueError(f"cannot read the {what} data {path}: {type(exc).__name__}: {exc}") from exc


def _drift_alerts(report: dict[str, dict[str, Any]], psi_threshold: float, ks_pvalue: float) -> list[str]:
    alerts = []
    for name, entry in report.items():
        if entry.get("drifted"):
            reasons = []
            if entry.get("psi") is not None and entry["psi"] > psi_threshold:
                reasons.append(f"PSI {entry['psi']:.3f} > {psi_threshold:g}")
            if entry.get("ks_pvalue") is not None and entry["ks_pvalue"] < ks_pvalue:
                reasons.append(f"KS p-value {entry['ks_pvalue']:.2g} < {ks_pvalue:g}")
            psi = f"PSI {entry['psi']:.3f}" if entry.get("psi") is not None else "PSI n/a"
            alerts.append(f"drift in {entry['kind']} feature {name!r}: {'; '.join(reasons) or psi}")
        elif entry.get("psi") is None and entry.get("note"):
            alerts.append(f"feature {name!r} was not compared for drift: {entry['note']}")
    return alerts


def _record_to_mlflow(config: PipelineConfig, run: str, report: dict[str, Any], healthy: bool) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from mlpipeline.registry import ensure_experiment

    # An explicit client, not the process-global fluent API: nothing leaks into other stages in this process.
    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri, registry_uri=config.mlflow_tracking_uri)
    experiment_id = ensure_experiment(client, f"{config.mlflow_experiment}_monitoring", config.mlflow_artifact_location)
    mlflow_run = client.create_run(
        experiment_id,
        run_name=f"monitor-{run}",
        tags={"pipeline_run": run, "served_version": str(report["served_version"]), "healthy": str(healthy)},
    )
    run_id = mlflow_run.info.run_id
    try:
        now = int(time.time() * 1000)
        values: dict[str, float | None] = {
            "healthy": float(healthy),
            "requests": float(report["live"]["requests"]),
            "failures": float(report["live"]["failures"]),
            "latency_p50_ms": report["live"]["latency_p50_ms"],
            "latency_p95_ms": report["live"]["latency_p95_ms"],
            "live_accuracy": report["live"]["live_accuracy"],
            "max_psi": report["drift"]["max_psi"],
            "drifted_features": float(len(report["drift"]["drifted_features"])),
        }
        for name, entry in report["drift"]["features"].items():
            # MLflow metric names allow only letters, digits and _-. /; column names may hold anything.
            safe = re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)
            values[f"psi.{safe}"] = entry.get("psi")
            values[f"ks_pvalue.{safe}"] = entry.get("ks_pvalue")
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and math.isfinite(v)]
        params = [
            Param("serving_url", config.serving_url),
            Param("expected_version", str(report["expected_version"])),
            Param("monitor_requests", str(config.monitor_requests)),
            Param("psi_threshold", str(config.drift_psi_threshold)),
            Param("ks_pvalue_threshold", str(config.drift_ks_pvalue)),
        ]
        client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("mlpipeline.stage", "monitor")])
        client.log_dict(run_id, report["drift"], "drift_report.json")
        client.log_dict(run_id, report, "monitor_report.json")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED" if healthy else "FAILED")
    return run_id


def _superseded_by(config: PipelineConfig, expected_version: str | None) -> str | None:
    """The champion's version if a later deployment has replaced ``expected_version`` since, else None."""
    if expected_version is None:
        return None
    from mlpipeline.registry import champion_version, use_tracking

    champion = champion_version(use_tracking(config), config)
    if champion is None or int(champion.version) <= int(expected_version):
        return None
    return str(champion.version)


def monitor(
    config: PipelineConfig,
    *,
    run: str,
    current_path: str,
    reference_path: str,
    holdout_path: str,
    expected_version: str | None = None,
) -> MonitorResult:
    """Check the live endpoint and the data drift, record both (MLflow + ``runs/<run>/monitor.json``).

    Raises :class:`MonitorError` (after recording) when the endpoint is unhealthy or monitoring could not run.
    """
    key = run_key(run)
    report_path = DataLayout.of(config.data_dir).run_records(key) / REPORT_FILE
    schema = config.dataset_schema
    stage_errors: list[str] = []  # monitoring itself could not do its job
    checked_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    holdout: pd.DataFrame | None = None
    try:
        holdout = _read(holdout_path, "held-out")
        missing = [c for c in [*schema.feature_names, schema.target] if c not in holdout.columns]
        if missing:
            raise ValueError(f"the held-out data {holdout_path} lacks column(s) {missing}")
        if holdout.empty:
            raise ValueError(f"the held-out data {holdout_path} has no rows to send as live checks")
    except ValueError as exc:
        stage_errors.append(str(exc))
        holdout = None

    live = _LiveCheck()
    superseded = _superseded_by(config, expected_version)
    if superseded is not None:
        # Another run deployed a newer champion since ours (concurrent runs): what must be live is that one.
        live.alerts.append(
            f"version {expected_version} deployed by this run was superseded by version {superseded}; "
            "monitored the live champion instead"
        )
        expected_version = superseded
    started = time.perf_counter()
    _live_checks(config, holdout, None if expected_version is None else str(expected_version), live)
    live_seconds = time.perf_counter() - started

    drift: dict[str, dict[str, Any]] = {}
    try:
        drift = drift_report(
            _read(reference_path, "reference"),
            _read(current_path, "current"),
            schema,
            config.drift_psi_threshold,
            config.drift_ks_pvalue,
        )
    except ValueError as exc:
        stage_errors.append(f"drift could not be computed: {exc}")
    drifted = [name for name, entry in drift.items() if entry["drifted"]]
    psis = [entry["psi"] for entry in drift.values() if entry.get("psi") is not None]
    max_psi = max(psis) if psis else None

    healthy = not live.problems
    latencies = live.latencies_ms
    p50 = float(np.percentile(latencies, 50)) if latencies else None
    p95 = float(np.percentile(latencies, 95)) if latencies else None
    accuracy = live.correct / live.scored if live.scored else None
    alerts = [*live.problems, *live.alerts, *_drift_alerts(drift, config.drift_psi_threshold, config.drift_ks_pvalue)]
    alerts += stage_errors

    report: dict[str, Any] = {
        "run": key,
        "checked_at": checked_at,
        "serving_url": config.serving_url,
        "model_name": config.registered_model_name,
        "healthy": healthy,
        "served_version": live.served_version,
        "expected_version": expected_version,
        "health": live.health,
        "live": {
            "requests": live.requests,
            "failures": live.failures,
            "errors": live.errors,
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "latency_max_ms": max(latencies) if latencies else None,
            "latency_budget_ms": config.monitor_latency_budget_ms,
            "live_accuracy": accuracy,
            "scored_rows": live.scored,
            "batch": live.batch,
            "seconds": round(live_seconds, 3),
        },
        "drift": {
            "reference_path": reference_path,
            "current_path": current_path,
            "psi_threshold": config.drift_psi_threshold,
            "ks_pvalue_threshold": config.drift_ks_pvalue,
            "drifted_features": drifted,
            "max_psi": max_psi,
            "features": drift,
        },
        "problems": live.problems,
        "alerts": alerts,
        "mlflow": {"tracking_uri": config.mlflow_tracking_uri, "run_id": None, "error": None},
    }

    mlflow_run_id: str | None = None
    try:
        mlflow_run_id = _record_to_mlflow(config, key, report, healthy)
    except Exception as exc:
        message = f"recording to MLflow at {config.mlflow_tracking_uri} failed: {type(exc).__name__}: {exc}"
        report["mlflow"]["error"] = message
        stage_errors.append(message)
        alerts.append(message)
    report["mlflow"]["run_id"] = mlflow_run_id
    atomic_write_json(report_path, _json_safe(report))

    result = MonitorResult(
        healthy=healthy,
        served_version=live.served_version,
        expected_version=None if expected_version is None else str(expected_version),
        latency_p50_ms=None if p50 is None else round(p50, 3),
        latency_p95_ms=None if p95 is None else round(p95, 3),
        live_accuracy=None if accuracy is None else round(accuracy, 6),
        requests=live.requests,
        failures=live.failures,
        drifted_features=tuple(drifted),
        max_psi=None if max_psi is None else round(max_psi, 6),
        report_path=str(report_path),
        alerts=tuple(alerts),
        mlflow_run_id=mlflow_run_id,
    )
    if live.problems or stage_errors:
        what = "the model endpoint is unhealthy" if live.problems else "monitoring could not complete"
        raise MonitorError(f"{what}: {'; '.join([*live.problems, *stage_errors])} (report: {report_path})", result)
    return result


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


__all__ = [
    "REPORT_FILE",
    "MonitorError",
    "MonitorResult",
    "categorical_psi",
    "drift_report",
    "ks_test",
    "monitor",
    "population_stability_index",
]
