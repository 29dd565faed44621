"""The candidates' answers on their held-out rows, for the curves and the importance the records do not hold.

Every candidate of a run shares the same seeded split, so their answers are on the same rows. Models are loaded the
way every stage loads them (signature verified, :func:`mlpipeline.registry.load_sklearn_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance

from mlpipeline.config import PipelineConfig
from mlpipeline.registry import load_sklearn_model, use_tracking
from mlpipeline.stages.report.records import CandidateRecord
from mlpipeline.stages.train import load_holdout

log = logging.getLogger(__name__)

# Curves and scatter plots need no more rows than this (a seeded sample of a larger holdout).
MAX_SCORED_ROWS = 20_000
# Permutation importance predicts n_repeats x features times: on at most this many rows, a few repeats.
IMPORTANCE_ROWS = 2_000
IMPORTANCE_REPEATS = 3
# sklearn's scorer for each metric: greater is better for all (errors negated), so a drop means the feature mattered.
SCORERS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "f1": "f1",
    "f1_macro": "f1_macro",
    "roc_auc": "roc_auc",
    "roc_auc_ovr": "roc_auc_ovr",
    "log_loss": "neg_log_loss",
    "rmse": "neg_root_mean_squared_error",
    "mae": "neg_mean_absolute_error",
    "r2": "r2",
}


@dataclass(frozen=True)
class Answers:
    """One candidate's answers on (a sample of) its held-out rows."""

    candidate: str
    task: str
    truth: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray | None  # classification: one column per class (model.classes_ order)
    classes: list[Any]

    @property
    def positive_probability(self) -> np.ndarray:
        """Binary: P(class 1), the column of 1 in classes_ ([0, 1])."""
        if self.probabilities is None or self.task != "binary":
            raise ValueError(f"{self.candidate}: no binary probabilities")
        return self.probabilities[:, self.classes.index(1)]


@dataclass(frozen=True)
class Importance:
    """Permutation importance of each raw feature column: the mean and spread of the score's drop."""

    metric: str
    scorer: str
    rows: int
    repeats: int
    features: list[tuple[str, float, float]]  # (column, mean drop, std), largest first


def sampled_holdout(config: PipelineConfig, candidate: CandidateRecord, rows: int) -> tuple[pd.DataFrame, pd.Series]:
    """The candidate's held-out features and target (as the task holds it), a seeded sample of at most ``rows``."""
    features, target = load_holdout(candidate.holdout_path, config.dataset_schema, candidate.task or config.task)
    if len(features) > rows:
        chosen = np.random.default_rng(config.random_state).choice(len(features), size=rows, replace=False)
        chosen.sort()
        features, target = features.iloc[chosen], target.iloc[chosen]
    return features.reset_index(drop=True), target.reset_index(drop=True)


def load_model(config: PipelineConfig, candidate: CandidateRecord) -> Any:
    uri = candidate.train.get("model_uri")
    if not uri:
        raise ValueError(f"{candidate.name}'s train.json names no model_uri")
    use_tracking(config)
    return load_sklearn_model(str(uri))


def answers(config: PipelineConfig, candidate: CandidateRecord, model: Any) -> Answers:
    """What ``model`` answers on the candidate's held-out rows (sampled to ``MAX_SCORED_ROWS``)."""
    features, target = sampled_holdout(config, candidate, MAX_SCORED_ROWS)
    task = candidate.task or config.task
    probabilities = model.predict_proba(features) if hasattr(model, "predict_proba") else None
    classes = np.asarray(getattr(model, "classes_", [])).tolist()
    return Answers(
        candidate=candidate.name,
        task=task,
        truth=target.to_numpy(),
        predicted=np.asarray(model.predict(features)),
        probabilities=None if probabilities is None else np.asarray(probabilities, dtype=float),
        classes=classes,
    )


def importance(config: PipelineConfig, candidate: CandidateRecord, model: Any, metric: str) -> Importance:
    """Permutation importance of the raw columns on at most ``IMPORTANCE_ROWS`` held-out rows, seeded."""
    scorer = SCORERS.get(metric)
    if scorer is None:
        raise ValueError(f"no scorer for metric {metric!r}")
    features, target = sampled_holdout(config, candidate, IMPORTANCE_ROWS)
    result = permutation_importance(
        model,
        features,
        target,
        scoring=scorer,
        n_repeats=IMPORTANCE_REPEATS,
        random_state=config.random_state,
        n_jobs=1,
    )
    ranked = sorted(
        zip(features.columns, result.importances_mean, result.importances_std, strict=True),
        key=lambda item: -float(item[1]),
    )
    return Importance(
        metric=metric,
        scorer=scorer,
        rows=len(features),
        repeats=IMPORTANCE_REPEATS,
        features=[(str(name), float(mean), float(std)) for name, mean, std in ranked],
    )
