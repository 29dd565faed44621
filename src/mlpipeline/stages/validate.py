"""Validate stage: pick the best of the trained candidates, then deploy it only if it clears the threshold AND
beats the champion scored on the same held-out rows (a tie keeps the champion). "Better" follows the metric's
direction (``mlpipeline.tasks``: higher for accuracy or r2, lower for rmse, mae, log_loss). The decision and its
reasons are recorded. Before any of that, :func:`check_data` says whether there is anything new to train at all."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from sklearn.base import is_classifier

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
from mlpipeline.stages.evaluation import evaluate, json_classes
from mlpipeline.stages.notify import Email
from mlpipeline.stages.train import POSITIVE_LABEL_TAG, TrainResult, load_holdout
from mlpipeline.storage import DataLayout, atomic_write_json
from mlpipeline.tasks import (
    CLASSIFICATION,
    DEFAULT_METRIC,
    check_metric_fits,
    higher_is_better,
    is_better,
    passes_threshold,
    shifted,
)

RECORD_FILE = "validate.json"
DATA_CHECK_FILE = "data_check.json"


@dataclass(frozen=True)
class ValidationDecision:
    deploy: bool
    metric: str
    candidate_score: float
    threshold: float | None  # None: the metric has no bar (metric_threshold unset, no default for the metric)
    champion_version: str | None
    champion_score: float | None  # None: no champion, or one that could not be scored on these rows
    reasons: list[str] = field(default_factory=list)
    record_path: str = ""
    candidate: str = ""
    ranking: list[dict[str, Any]] = field(default_factory=list)
    task: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def direction(metric: str) -> str:
    """ " (lower is better)" for the metrics where it is, else "" (higher is the reader's default)."""
    return "" if higher_is_better(metric) else " (lower is better)"


def _rank_key(result: TrainResult, metric: str) -> tuple[int, float]:
    value = float(result.metrics.get(metric, float("nan")))
    if math.isnan(value):
        return (1, 0.0)  # an undefined score ranks after every real one
    return (0, -value if higher_is_better(metric) else value)


def select_best(candidates: Sequence[TrainResult], metric: str) -> tuple[TrainResult, list[dict[str, Any]]]:
    """The best candidate by ``metric`` in its direction (NaN last; ties go to the earlier one, in config order)
    and the full ranking."""
    if not candidates:
        raise ValueError("no trained candidate to choose from")
    # sorted() is stable, so equal scores keep the config's order.
    ranked = sorted(candidates, key=lambda result: _rank_key(result, metric))
    ranking = [
        {"candidate": r.candidate, "model_type": r.model_type, metric: r.metrics.get(metric), "model_uri": r.model_uri}
        for r in ranked
    ]
    return ranked[0], ranking


def validate(
    config: PipelineConfig, *, run: str, candidate: TrainResult, ranking: list[dict[str, Any]] | None = None
) -> ValidationDecision:
    """Decide whether ``candidate`` (the best of ``ranking``, if several were trained) replaces the champion.

    A champion that cannot be scored on the candidate's held-out rows is "not comparable" and the threshold alone
    decides, as for the first model: one trained for another task (a classifier while the target is now a
    quantity, a regressor while it is now a label, a classifier of other classes) or one that needs columns the
    data no longer has. Its score on these rows would be meaningless (labels measured against quantities, classes
    the rows never hold), and keeping it would keep serving answers of a problem the data no longer is, with no
    run ever able to replace it. The threshold still guards the candidate where the metric has a bar; the reasons
    (and so the email) say the champion was not compared, and that /predict answers change kind when the task
    did. The previous version stays in the registry to roll back to.
    """
    task = _task(config, candidate)
    metric = config.validation_metric or DEFAULT_METRIC[task]
    check_metric_fits(metric, task)
    threshold = config.threshold_for(metric)
    score = float(candidate.metrics.get(metric, float("nan")))
    reasons: list[str] = []
    if ranking and len(ranking) > 1:
        others = ", ".join(f"{r['candidate']} {_number(r.get(metric))}" for r in ranking[1:])
        best = f"best of {len(ranking)} candidates by {metric}{direction(metric)}: {candidate.candidate}"
        reasons.append(f"{best} (others: {others})")
    passes = passes_threshold(metric, score, threshold)
    reasons.append(_threshold_reason(metric, score, threshold, passes))

    champion = champion_version(use_tracking(config), config)
    champion_score: float | None = None
    # What decides without a champion to compare with (the first model, or one that cannot be scored here).
    alone = "the threshold alone decides" if threshold is not None else "no threshold either: any real score passes"
    if champion is None:
        reasons.append(f"no champion yet: {alone}")
    else:
        champion_score, reason = _versus_champion(config, candidate, champion, (score, task, metric), alone)
        reasons.append(reason)
        passes = passes and (champion_score is None or beats_champion(config, score, champion_score, metric))

    record = DataLayout.of(config.data_dir).run_records(run) / RECORD_FILE
    decision = ValidationDecision(
        deploy=passes,
        metric=metric,
        candidate_score=score,
        threshold=threshold,
        champion_version=None if champion is None else str(champion.version),
        champion_score=champion_score,
        reasons=reasons,
        record_path=str(record),
        candidate=candidate.candidate,
        ranking=ranking or [],
        task=task,
    )
    atomic_write_json(record, decision.to_dict())
    return decision


def _task(config: PipelineConfig, candidate: TrainResult) -> str:
    # The candidate's record says what it was trained as; records of older runs (no task) were all binary.
    return candidate.task or (config.task if config.task != "auto" else "binary")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


def _threshold_reason(metric: str, score: float, threshold: float | None, passes: bool) -> str:
    if math.isnan(score):
        return f"candidate {metric} is undefined (NaN) on the held-out rows: it cannot pass"
    if threshold is None:
        return (
            f"candidate {metric} {score:.4f}{direction(metric)}: no threshold (metric_threshold is unset and {metric}"
            " has no default bar)"
        )
    at_or_past, short_of = (">=", "<") if higher_is_better(metric) else ("<=", ">")
    relation = at_or_past if passes else short_of
    return f"candidate {metric} {score:.4f} {relation} threshold {threshold:.4f}{direction(metric)}"


def _versus_champion(
    config: PipelineConfig,
    candidate: TrainResult,
    champion: ModelVersion,
    judged: tuple[float, str, str],
    alone: str,
) -> tuple[float | None, str]:
    """The champion's score on the candidate's held-out rows (None if it cannot be scored on them) and the reason
    to record. ``judged``: the candidate's score, the task and the metric; ``alone``: what decides without it."""
    score, task, metric = judged
    features, target = load_holdout(candidate.holdout_path, config.dataset_schema, task)
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
    classes = candidate.classes or ([0, 1] if task == "binary" else sorted(target.unique().tolist()))
    different = _other_problem(champion_model, task, classes) or _other_positive_label(config, champion, task)
    if different:
        return None, (
            f"champion v{champion.version} is not comparable: {different}. It cannot be scored on these rows: {alone}"
        )
    missing = [c for c in getattr(champion_model, "feature_names_in_", []) if c not in features.columns]
    if missing:
        return None, (
            f"champion v{champion.version} expects column(s) {missing} the new data lacks (schema changed): "
            f"it cannot be scored, {alone}"
        )
    champion_score = float(evaluate(champion_model, features, target, task, classes)[metric])
    relation = ">" if score > champion_score else "=" if score == champion_score else "<"
    replaces = beats_champion(config, score, champion_score, metric)
    outcome = "it replaces the champion" if replaces else "the champion stays"
    rule = (
        f"may be up to {config.champion_tolerance:.4f} worse"
        if config.champion_tolerance
        else f"must beat it by more than {config.champion_margin:.4f}"
    )
    return champion_score, (
        f"candidate {metric} {score:.4f} {relation} champion v{champion.version} {champion_score:.4f} on the same "
        f"held-out rows{direction(metric)}: {outcome} (a candidate {rule})"
    )


def _other_problem(champion: Any, task: str, classes: list[Any]) -> str | None:
    """Why the champion answers another problem than this run's ``task`` (None: the same problem)."""
    champion_classes = json_classes(champion) if is_classifier(champion) else None
    if task not in CLASSIFICATION:
        if champion_classes is None:
            return None
        return (
            f"it is a classifier (classes {_few(champion_classes)}) and this run's target is a quantity "
            "(regression); once deployed, /predict answers numbers instead of labels"
        )
    if champion_classes is None:
        return f"it is a regressor and this run is {task} classification; once deployed, /predict answers labels"
    if champion_classes != list(classes):
        return f"its classes {_few(champion_classes)} are not this run's {_few(list(classes))} ({task})"
    return None


def _other_positive_label(config: PipelineConfig, champion: ModelVersion, task: str) -> str | None:
    """Why a binary champion's 1 means another source label than this run's (None: the same, or not recorded:
    champions trained before the tag existed used the then-default "1")."""
    label = config.dataset_schema.positive_label
    if task != "binary" or label is None or not champion.run_id:
        return None
    theirs = use_tracking(config).get_run(champion.run_id).data.tags.get(POSITIVE_LABEL_TAG)
    if theirs is None or theirs == label:
        return None
    return f"its positive class is {theirs!r} and this run's is {label!r}: its probabilities answer the other class"


def _few(values: list[Any], shown: int = 10) -> str:
    return str(values) if len(values) <= shown else f"{values[:shown]}... ({len(values)} in all)"


def beats_champion(config: PipelineConfig, score: float, champion_score: float, metric: str | None = None) -> bool:
    """Whether the candidate replaces the champion, in ``metric``'s direction: it must be better than the champion
    by more than ``champion_margin`` (so a tie keeps the champion), unless ``champion_tolerance`` lets a slightly
    worse, fresher model replace it. ``metric`` defaults to the config's (every task's default metric is
    higher-is-better, which an unresolved config then falls back to)."""
    metric = metric or config.validation_metric or DEFAULT_METRIC["binary"]
    if config.champion_tolerance:
        # "at least as good as the champion made worse by the tolerance"
        return not is_better(metric, shifted(metric, champion_score, -config.champion_tolerance), score)
    return is_better(metric, score, shifted(metric, champion_score, config.champion_margin))


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
