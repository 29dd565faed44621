"""Validate stage: pick the best of the trained candidates, then deploy it only if it clears the threshold AND
is not worse than the champion scored on the same held-out rows. The decision and its reasons are recorded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from mlpipeline.config import PipelineConfig
from mlpipeline.registry import champion_version, load_sklearn_model, use_tracking
from mlpipeline.stages.train import TrainResult, evaluate, load_holdout
from mlpipeline.storage import DataLayout, atomic_write_json

RECORD_FILE = "validate.json"


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
        passes = passes and (champion_score is None or score >= champion_score - config.champion_tolerance)

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
    relation = ">=" if score >= champion_score - config.champion_tolerance else "<"
    return champion_score, (
        f"candidate {metric} {score:.4f} {relation} champion v{champion.version} {champion_score:.4f}"
        + (f" - tolerance {config.champion_tolerance:.4f}" if config.champion_tolerance else "")
        + " on the same held-out rows"
    )
