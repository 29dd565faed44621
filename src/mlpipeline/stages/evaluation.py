"""Held-out metrics for every task: the train stage scores each candidate with :func:`evaluate`, and validation
scores the champion on the candidate's held-out rows with the same function."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from mlpipeline.tasks import CLASSIFICATION, metrics_for

log = logging.getLogger(__name__)


def json_classes(model: Any) -> list[Any]:
    """A classifier's ``classes_`` as JSON values (int, float, str, bool); [] for a regressor."""
    classes = getattr(model, "classes_", None)
    return [] if classes is None else np.asarray(classes).tolist()


def evaluate(
    model: Any, features: pd.DataFrame, target: pd.Series, task: str, classes: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Held-out metrics: every metric of ``mlpipeline.tasks.METRICS`` that fits ``task``, NaN where one is undefined
    (e.g. ROC AUC with a single class in the rows); binary adds precision and recall, classification the confusion
    matrix over ``classes`` (default: the model's). The same function scores the champion during validation."""
    predicted = model.predict(features)
    scores: dict[str, Any] = {}
    if task in CLASSIFICATION:
        model_classes = list(model.classes_)
        probabilities = model.predict_proba(features)
        for name in metrics_for(task):
            scores[name] = _classification_metric(name, target, predicted, probabilities, model_classes)
        if task == "binary":
            scores["precision"] = precision_score(target, predicted, zero_division=0)
            scores["recall"] = recall_score(target, predicted, zero_division=0)
    else:
        for name in metrics_for(task):
            scores[name] = _undefined_is_nan(name, partial(_REGRESSION[name], target, predicted))
    metrics: dict[str, Any] = {name: round(float(value), 6) for name, value in scores.items()}
    if task in CLASSIFICATION:
        labels = [0, 1] if task == "binary" and classes is None else list(model_classes if classes is None else classes)
        metrics["confusion_matrix"] = confusion_matrix(target, predicted, labels=labels).tolist()
        if task == "multiclass":
            metrics["confusion_matrix_labels"] = np.asarray(labels).tolist()
    return metrics


_REGRESSION: dict[str, Callable[[Any, Any], float]] = {
    "rmse": root_mean_squared_error,
    "mae": mean_absolute_error,
    # r2 needs two rows and some spread in the target; sklearn says NaN (with a warning) otherwise.
    "r2": r2_score,
}


def _classification_metric(
    name: str, target: pd.Series, predicted: np.ndarray, probabilities: np.ndarray, classes: list[Any]
) -> float:
    calculations: dict[str, Callable[[], float]] = {
        "accuracy": lambda: accuracy_score(target, predicted),
        "balanced_accuracy": lambda: balanced_accuracy_score(target, predicted),
        "f1": lambda: f1_score(target, predicted, zero_division=0),
        "f1_macro": lambda: f1_score(target, predicted, average="macro", zero_division=0),
        # The probability of the positive class (1) is the column of 1 in classes_ ([0, 1]).
        "roc_auc": lambda: roc_auc_score(target, probabilities[:, 1]) if target.nunique() == 2 else float("nan"),
        "roc_auc_ovr": lambda: roc_auc_score(target, probabilities, multi_class="ovr", labels=classes),
        "log_loss": lambda: log_loss(target, probabilities, labels=classes),
    }
    return _undefined_is_nan(name, calculations[name])


def _undefined_is_nan(name: str, calculation: Callable[[], float]) -> float:
    try:
        return calculation()
    except ValueError as exc:  # the metric is undefined on these rows (e.g. one class only for ROC AUC)
        log.warning("%s is undefined on these rows (%s): NaN", name, exc)
        return float("nan")
