"""What kind of problem a dataset is (binary, multiclass, regression) and how each kind is judged.

One table of metrics: which tasks each fits, which way is better, whether it needs probabilities and the bar a
model must pass when no ``metric_threshold`` is set. The ETL decides an ``auto`` task from the target column
(:func:`decide_task`); training, validation, deploy and the emails read the direction from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

TaskSetting = Literal["auto", "binary", "multiclass", "regression"]
Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")
CLASSIFICATION: frozenset[str] = frozenset({"binary", "multiclass"})

MetricName = Literal[
    "accuracy",
    "balanced_accuracy",
    "f1",
    "f1_macro",
    "roc_auc",
    "roc_auc_ovr",
    "log_loss",
    "rmse",
    "mae",
    "r2",
]

# ``auto``: a numeric target with more distinct values than this, or with any non-integer value, is a quantity
# (regression); anything else is a label (classification by class count). 20 integer levels is more than any
# rating scale or count-of-classes label in common datasets (wine quality has 7) and far fewer than a measured
# quantity over a few hundred rows (diabetes progression has 214).
AUTO_REGRESSION_MIN_DISTINCT = 20
# A classification target with more classes than this is refused: it is an id or free text, not a label.
MAX_CLASSES = 1000


@dataclass(frozen=True)
class Metric:
    """How a metric judges: the tasks it fits, its direction, and the default bar (None: no absolute bar)."""

    name: str
    tasks: frozenset[str]
    higher_is_better: bool
    needs_probabilities: bool = False
    default_threshold: float | None = None
    lowest: float | None = None  # the smallest value a threshold may take
    highest: float | None = None  # the largest value a threshold may take


_CLASSIFICATION_RANGE = {"lowest": 0.0, "highest": 1.0}
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", CLASSIFICATION, True, default_threshold=0.75, **_CLASSIFICATION_RANGE),
        Metric("balanced_accuracy", CLASSIFICATION, True, default_threshold=0.75, **_CLASSIFICATION_RANGE),
        Metric("f1", frozenset({"binary"}), True, default_threshold=0.75, **_CLASSIFICATION_RANGE),
        Metric("f1_macro", CLASSIFICATION, True, default_threshold=0.75, **_CLASSIFICATION_RANGE),
        Metric("roc_auc", frozenset({"binary"}), True, True, default_threshold=0.75, **_CLASSIFICATION_RANGE),
        Metric("roc_auc_ovr", frozenset({"multiclass"}), True, True, default_threshold=0.75, **_CLASSIFICATION_RANGE),
        Metric("log_loss", CLASSIFICATION, False, True, lowest=0.0),
        Metric("rmse", frozenset({"regression"}), False, lowest=0.0),
        Metric("mae", frozenset({"regression"}), False, lowest=0.0),
        # r2 > 0: better than always predicting the mean, the least a model must do to be worth serving.
        Metric("r2", frozenset({"regression"}), True, default_threshold=0.0, highest=1.0),
    )
}
DEFAULT_METRIC: dict[str, str] = {"binary": "accuracy", "multiclass": "accuracy", "regression": "r2"}


def metrics_for(task: str) -> list[str]:
    """The metric names that fit ``task`` (in table order)."""
    return [name for name, metric in METRICS.items() if task in metric.tasks]


def check_metric_fits(metric: str, task: str) -> None:
    """Raise ValueError, naming the metrics that fit, if ``metric`` cannot judge a ``task`` model."""
    if task in TASKS and task not in METRICS[metric].tasks:
        raise ValueError(
            f"validation_metric {metric!r} does not fit a {task} task; metrics that fit: {', '.join(metrics_for(task))}"
        )


def higher_is_better(metric: str) -> bool:
    return METRICS[metric].higher_is_better


def is_better(metric: str, score: float, other: float) -> bool:
    """Strictly better, in the metric's direction (NaN is never better)."""
    if math.isnan(score):
        return False
    if math.isnan(other):
        return True
    return score > other if higher_is_better(metric) else score < other


def passes_threshold(metric: str, score: float, threshold: float | None) -> bool:
    """At or past the bar in the metric's direction; no bar (None) passes any real score."""
    if math.isnan(score):
        return False
    if threshold is None:
        return True
    return score >= threshold if higher_is_better(metric) else score <= threshold


def shifted(metric: str, score: float, by: float) -> float:
    """``score`` moved ``by`` towards better (negative ``by``: towards worse) in the metric's direction."""
    return score + by if higher_is_better(metric) else score - by


def decide_task(*, numeric: bool, integral: bool, distinct: int) -> Task:
    """``auto``: what a target column is, from whether all its values are numbers, whole numbers, and how many
    distinct values it has."""
    if numeric and (not integral or distinct > AUTO_REGRESSION_MIN_DISTINCT):
        return "regression"
    return "binary" if distinct <= 2 else "multiclass"


def task_of_target(values: pd.Series) -> Task:
    """What ``auto`` decides for a target column already in memory (processed data, a holdout): the ETL's rule on
    its known values (booleans are labels; text that all parses as numbers counts as numbers)."""
    present = values.dropna()
    numbers = None if pd.api.types.is_bool_dtype(present) else pd.to_numeric(present, errors="coerce")
    numeric = numbers is not None and bool(numbers.notna().all())
    integral = numeric and bool((numbers % 1 == 0).all())
    return decide_task(numeric=numeric, integral=integral, distinct=int(present.nunique()))
