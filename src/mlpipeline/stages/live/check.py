"""The live check: is the champion still doing on live traffic what it did on its held-out rows?

One window (``monitoring_window_hours``) of the model server's prediction log for the version the champion alias
points at, against that version's own reference (:mod:`.reference`):

- input drift per feature and drift of the model's answers, by PSI and KS as :mod:`mlpipeline.stages.monitor.drift`
  computes them (``drift_psi_threshold``, ``drift_ks_pvalue``);
- the live score on the rows whose outcome came back (``/feedback``) vs the validation score
  (``live_score_tolerance``, in the metric's direction);
- latency p50/p95 and the error rate of the model's requests, recorded (not judged: retraining fixes neither).

Verdict: ``degraded`` (with the reasons) when something drifted or the live score fell too far; ``healthy``
otherwise; ``not_enough_traffic`` when the window holds fewer than ``monitoring_min_samples`` predictions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd

from mlpipeline.config import PipelineConfig
from mlpipeline.prediction_store import create_tables, engine_for
from mlpipeline.registry import use_tracking
from mlpipeline.stages.live import traffic
from mlpipeline.stages.live.reference import Reference, champion_reference
from mlpipeline.stages.live.scoring import LiveScore, live_score
from mlpipeline.stages.monitor.drift import DriftReport, outcome_drift
from mlpipeline.tasks import higher_is_better, is_better, shifted

HEALTHY, DEGRADED, NOT_ENOUGH_TRAFFIC = "healthy", "degraded", "not_enough_traffic"
MAX_CHECK_ID_CHARS = 64  # monitoring_checks.check_id
TOP_DRIFT = 10


class LiveMonitoringError(RuntimeError):
    """Live monitoring cannot run as configured (the message says what to set)."""


class NothingToMonitor(LiveMonitoringError):
    """No prediction log is configured, or there is no champion yet: nothing to judge, nothing wrong."""


@dataclass(frozen=True)
class LiveCheck:
    """What one check found (see the module's doc); ``record_path`` is its JSON record."""

    check_id: str
    checked_at: float
    model_name: str
    model_version: str
    verdict: str
    reasons: tuple[str, ...]
    window_start: float
    window_end: float
    window_hours: float
    predictions: int
    with_feedback: int
    min_samples: int
    metric: str
    validation_score: float
    score_tolerance: float
    live_score: float | None
    live_metrics: dict[str, float]
    scored_rows: int
    requests: dict[str, Any]
    drift: dict[str, Any] | None
    top_drift: list[dict[str, Any]]
    reference_uri: str
    mlflow_run_id: str
    record_path: str = ""
    notes: tuple[str, ...] = ()
    sampled: int = 0
    ks_pvalue_per_feature: float | None = None

    @property
    def degraded(self) -> bool:
        return self.verdict == DEGRADED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _valid_check_id(check_id: str) -> str:
    if not check_id or len(check_id) > MAX_CHECK_ID_CHARS:
        raise ValueError(f"check_id must be 1 to {MAX_CHECK_ID_CHARS} characters, got {check_id!r}")
    return check_id


def check_live_traffic(config: PipelineConfig, *, check_id: str, now: float | None = None) -> LiveCheck:
    """Judge the champion's live traffic of the window ending at ``now`` (epoch seconds; default: now) and record
    the result: ``<data_dir>/monitoring/<check_id>.json``, rows in ``monitoring_checks``/``monitoring_drift``
    (replacing this check's, so a retry leaves one), ``live_*`` metrics on the champion's MLflow run.

    Why ``monitoring_min_samples`` defaults to 200: PSI over 10 bins on fewer rows reads noise as drift (each bin
    then holds ~20 rows, and an empty bin alone adds ~0.1), and a live accuracy on 100 rows is only known to about
    +-0.09 (95 %), wider than any useful tolerance.

    Raises NothingToMonitor without a prediction log or a champion; ReferenceError if the champion has no
    reference."""
    from mlpipeline.stages.live.records import record_check

    _valid_check_id(check_id)
    if not config.prediction_log_url:
        raise NothingToMonitor("prediction_log_url is not set: live traffic is not logged, so not monitored")
    now = time.time() if now is None else float(now)
    client = use_tracking(config)
    reference = champion_reference(client, config)
    if reference is None:
        raise NothingToMonitor(
            f"no {config.champion_alias!r} version of {config.registered_model_name!r} yet: nothing is served"
        )
    window = traffic.Window(reference.model_name, reference.version, now - config.monitoring_window_hours * 3600, now)
    engine = engine_for(config.prediction_log_url)
    try:
        create_tables(engine)  # the server may not have logged anything yet
        with engine.connect() as connection:
            check = _measure(config, connection, reference, window, check_id)
        return record_check(config, engine, client, check)
    finally:
        engine.dispose()


def _measure(
    config: PipelineConfig, connection: Any, reference: Reference, window: traffic.Window, check_id: str
) -> LiveCheck:
    minimum = config.monitoring_min_samples
    total, with_feedback = traffic.count_predictions(connection, window)
    requests = traffic.request_stats(connection, window)
    check = LiveCheck(
        check_id=check_id,
        checked_at=window.end,
        model_name=reference.model_name,
        model_version=reference.version,
        verdict=NOT_ENOUGH_TRAFFIC,
        reasons=(),
        window_start=window.start,
        window_end=window.end,
        window_hours=config.monitoring_window_hours,
        predictions=total,
        with_feedback=with_feedback,
        min_samples=minimum,
        metric=reference.metric,
        validation_score=reference.validation_score,
        score_tolerance=config.live_score_tolerance,
        live_score=None,
        live_metrics={},
        scored_rows=0,
        requests=requests.to_dict(),
        drift=None,
        top_drift=[],
        reference_uri=reference.uri,
        mlflow_run_id=reference.mlflow_run_id,
    )
    if total < minimum:
        why = (
            f"{total} logged predictions of version {reference.version} in the last {config.monitoring_window_hours:g}"
            f" h, fewer than monitoring_min_samples ({minimum}): no verdict"
        )
        return replace(check, reasons=(why,))
    inputs = traffic.live_inputs(connection, window, total)
    outcomes = traffic.live_outcomes(connection, window, with_feedback) if with_feedback >= minimum else None
    return _judge(config, check, reference, inputs, outcomes)


def _judge(
    config: PipelineConfig, check: LiveCheck, reference: Reference, inputs: pd.DataFrame, outcomes: pd.DataFrame | None
) -> LiveCheck:
    drift, per_feature = _drift(config, reference, inputs)
    reasons = [alert for alert in drift.alerts() if alert.startswith("drift in")]
    notes = [alert for alert in drift.alerts() if not alert.startswith("drift in")]
    score: LiveScore | None = None
    if outcomes is None:
        notes.append(
            f"{check.with_feedback} of the window's predictions have feedback, fewer than monitoring_min_samples "
            f"({check.min_samples}): no live score"
        )
    else:
        profile = reference.profile
        score = live_score(
            outcomes,
            task=reference.task,
            metric=reference.metric,
            classes=list(profile.get("classes") or []),
            positive_label=reference.schema.positive_label,
        )
        notes.extend(score.notes)
        reasons.extend(_score_reasons(config, reference, score))
    return replace(
        check,
        verdict=DEGRADED if reasons else HEALTHY,
        reasons=tuple(reasons),
        notes=tuple(notes),
        drift=drift.to_dict(),
        top_drift=_top_drift(drift),
        sampled=len(inputs),
        ks_pvalue_per_feature=per_feature,
        live_score=None if score is None else score.score,
        live_metrics={} if score is None else score.metrics,
        scored_rows=0 if score is None else score.rows,
    )


def _drift(config: PipelineConfig, reference: Reference, inputs: pd.DataFrame) -> tuple[DriftReport, float]:
    """Every feature's drift and the answers' drift. The KS p-value bar of a feature is ``drift_ks_pvalue`` divided
    by the number of features KS tests (Bonferroni): twenty features tested every hour at 1 % each would flag
    one by pure chance in about one check out of five. The answers are one test: the bar as configured."""
    schema = reference.schema
    tested = len(schema.columns_of_type("numeric", "integer", "date"))
    per_feature = config.drift_ks_pvalue / max(tested, 1)
    drift = DriftReport.measure(
        reference.features,
        inputs.drop(columns=[traffic.PREDICTION]),
        schema,
        psi_threshold=config.drift_psi_threshold,
        ks_pvalue=per_feature,
        reference_path=reference.uri,
        current_path="prediction log",
        task=None,
    )
    answers = outcome_drift(
        reference.task,
        reference.predictions,
        inputs[traffic.PREDICTION],
        config.drift_psi_threshold,
        config.drift_ks_pvalue,
    )
    return replace(drift, task=reference.task).with_predictions(answers), per_feature


def _score_reasons(config: PipelineConfig, reference: Reference, score: LiveScore) -> list[str]:
    metric, validation, live = reference.metric, reference.validation_score, score.score
    if live is None:
        return []
    floor = shifted(metric, validation, -config.live_score_tolerance)
    if not is_better(metric, floor, live):
        return []
    direction = "" if higher_is_better(metric) else " (lower is better)"
    return [
        f"live {metric}{direction} {live:.4f} on {score.rows} rows with feedback is worse than the validation score "
        f"{validation:.4f} by more than live_score_tolerance {config.live_score_tolerance:g}"
    ]


def _top_drift(drift: DriftReport) -> list[dict[str, Any]]:
    """The most moved features, drifted first, then by PSI."""
    rows = [
        {"feature": name, "kind": f.kind, "psi": f.psi, "ks_pvalue": f.ks_pvalue, "drifted": f.drifted}
        for name, f in drift.features.items()
        if f.compared
    ]
    rows.sort(key=lambda row: (not row["drifted"], -(row["psi"] or 0.0)))
    return rows[:TOP_DRIFT]
