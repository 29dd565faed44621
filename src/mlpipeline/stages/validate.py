"""Validate stage: pick the best of the trained candidates, then deploy it only if it clears the threshold AND
beats the champion scored on the same held-out rows (a tie keeps the champion). The decision and its reasons are
recorded. Before any of that, :func:`check_data` says whether there is anything new to train at all."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from mlpipeline.config import PipelineConfig
from mlpipeline.integrity import IntegrityError
from mlpipeline.registry import (
    DATA_SHA256_TAG,
    TRAINING_FINGERPRINT_TAG,
    champion_version,
    load_sklearn_model,
    training_fingerprint,
    use_tracking,
)
from mlpipeline.stages.notify import Email
from mlpipeline.stages.train import TrainResult, evaluate, load_holdout
from mlpipeline.storage import DataLayout, atomic_write_json

RECORD_FILE = "validate.json"
DATA_CHECK_FILE = "data_check.json"


@dataclass(frozen=True)
class ValidationDecision:
    deploy: bool
    metric: str
    candidate_score: float
    threshold: float
    champion_version: str | None
    champion_score: float | None
    reasons: list[str] = field(default_factory=list)
    record_path: str = ""
    candidate: str = ""
    ranking: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(result: TrainResult, metric: str) -> float:
    value = float(result.metrics.get(metric, float("nan")))
    return -math.inf if math.isnan(value) else value


def select_best(candidates: Sequence[TrainResult], metric: str) -> tuple[TrainResult, list[dict[str, Any]]]:
    """The best candidate by ``metric`` (ties go to the earlier one, in config order) and the full ranking."""
    if not candidates:
        raise ValueError("no trained candidate to choose from")
    # sorted() is stable, so equal scores keep the config's order.
    ranked = sorted(candidates, key=lambda result: -_score(result, metric))
    ranking = [
        {"candidate": r.candidate, "model_type": r.model_type, metric: r.metrics.get(metric), "model_uri": r.model_uri}
        for r in ranked
    ]
    return ranked[0], ranking


def validate(
    config: PipelineConfig, *, run: str, candidate: TrainResult, ranking: list[dict[str, Any]] | None = None
) -> ValidationDecision:
    """Decide whether ``candidate`` (the best of ``ranking``, if several were trained) replaces the champion."""
    metric = config.validation_metric
    score = float(candidate.metrics[metric])
    reasons: list[str] = []
    if ranking and len(ranking) > 1:
        others = ", ".join(f"{r['candidate']} {r[metric]:.4f}" for r in ranking[1:])
        reasons.append(f"best of {len(ranking)} candidates by {metric}: {candidate.candidate} (others: {others})")
    passes = not math.isnan(score) and score >= config.accuracy_threshold
    relation = ">=" if passes else "<"
    reasons.append(f"candidate {metric} {score:.4f} {relation} threshold {config.accuracy_threshold:.4f}")

    champion = champion_version(use_tracking(config), config)
    champion_score: float | None = None
    if champion is None:
        reasons.append("no champion yet: the threshold alone decides")
    else:
        champion_score, reason = _versus_champion(config, candidate, champion, score)
        reasons.append(reason)
        passes = passes and (champion_score is None or beats_champion(config, score, champion_score))

    record = DataLayout.of(config.data_dir).run_records(run) / RECORD_FILE
    decision = ValidationDecision(
        deploy=passes,
        metric=metric,
        candidate_score=score,
        threshold=config.accuracy_threshold,
        champion_version=None if champion is None else str(champion.version),
        champion_score=champion_score,
        reasons=reasons,
        record_path=str(record),
        candidate=candidate.candidate,
        ranking=ranking or [],
    )
    atomic_write_json(record, decision.to_dict())
    return decision


def _versus_champion(
    config: PipelineConfig, candidate: TrainResult, champion: ModelVersion, score: float
) -> tuple[float | None, str]:
    """The champion's score on the candidate's held-out rows (None if it cannot be scored on them) and the reason
    to record."""
    metric = config.validation_metric
    features, target = load_holdout(candidate.holdout_path, config.dataset_schema)
    champion_uri = f"models:/{config.registered_model_name}/{champion.version}"
    try:
        champion_model = load_sklearn_model(champion_uri)
    except IntegrityError:
        raise  # a refused champion (unsafe format, tampered files): bad input, says which and why; never retried
    except Exception as exc:
        raise RuntimeError(
            f"cannot load the current champion {champion_uri} to compare with the candidate: {exc}. "
            "Fix or re-point the alias before deploying; refusing to decide blind."
        ) from exc
    missing = [c for c in getattr(champion_model, "feature_names_in_", []) if c not in features.columns]
    if missing:
        return None, (
            f"champion v{champion.version} expects column(s) {missing} the new data lacks (schema changed): "
            "it cannot be scored, the threshold alone decides"
        )
    champion_score = float(evaluate(champion_model, features, target)[metric])
    relation = ">" if score > champion_score else "=" if score == champion_score else "<"
    outcome = "it replaces the champion" if beats_champion(config, score, champion_score) else "the champion stays"
    rule = (
        f"may be up to {config.champion_tolerance:.4f} worse"
        if config.champion_tolerance
        else f"must beat it by more than {config.champion_margin:.4f}"
    )
    return champion_score, (
        f"candidate {metric} {score:.4f} {relation} champion v{champion.version} {champion_score:.4f} on the same "
        f"held-out rows: {outcome} (a candidate {rule})"
    )


def beats_champion(config: PipelineConfig, score: float, champion_score: float) -> bool:
    """Whether the candidate replaces the champion: it must beat it by more than ``champion_margin`` (so a tie
    keeps the champion), unless ``champion_tolerance`` lets a slightly worse, fresher model replace it."""
    if config.champion_tolerance:
        return score >= champion_score - config.champion_tolerance
    return score > champion_score + config.champion_margin


# --- Is there anything new to train? ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataCheck:
    """Whether a run's data and training are those the champion came from (then training would only reproduce it)."""

    unchanged: bool
    reason: str
    data_sha256: str
    training_fingerprint: str
    champion_version: str | None
    checked_at: str
    record_path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_data(config: PipelineConfig, *, run: str, data_sha256: str) -> DataCheck:
    """Compare the crawled data's sha256 and this run's training (candidates, settings, code) with the champion's
    tags; record the answer in ``runs/<run>/data_check.json``."""
    fingerprint = training_fingerprint(config)
    champion = champion_version(use_tracking(config), config)
    unchanged, reason = _same_as_champion(champion, data_sha256, fingerprint)
    record = DataLayout.of(config.data_dir).run_records(run) / DATA_CHECK_FILE
    check = DataCheck(
        unchanged=unchanged,
        reason=reason,
        data_sha256=data_sha256,
        training_fingerprint=fingerprint,
        champion_version=None if champion is None else str(champion.version),
        checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        record_path=str(record),
    )
    atomic_write_json(record, check.to_dict())
    return check


def _same_as_champion(champion: ModelVersion | None, data_sha256: str, fingerprint: str) -> tuple[bool, str]:
    if champion is None:
        return False, "no champion yet: train"
    trained_on = champion.tags.get(DATA_SHA256_TAG) or "unknown"
    if trained_on != data_sha256:
        return False, f"new data (sha256 {data_sha256[:12]}; champion v{champion.version}'s: {trained_on[:12]}): train"
    if champion.tags.get(TRAINING_FINGERPRINT_TAG) != fingerprint:
        return False, (
            f"the data is what champion v{champion.version} was trained on, but the candidates, the settings that "
            "shape or judge them, or the code differ: train"
        )
    return True, (
        f"the data (sha256 {data_sha256[:12]}) and the training (candidates, settings, code) are those champion "
        f"v{champion.version} came from: training would reproduce it, so nothing is trained or registered"
    )


def unchanged_email(check: DataCheck, *, dag_run: str) -> Email:
    """The one short note a run that stopped early sends (if ``notify_unchanged``)."""
    return Email(
        subject=f"[ml_pipeline] nothing new: champion v{check.champion_version} keeps serving",
        html=f"<p>Run {escape(dag_run)}: {escape(check.reason)}.</p>",
    )
