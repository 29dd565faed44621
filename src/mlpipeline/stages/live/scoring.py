"""The live score: the champion's answers on rows whose actual outcome came back (``/feedback``), scored with the
same function that scored it on its held-out rows at training (:func:`mlpipeline.stages.evaluation.evaluate`).

The answers are replayed, not recomputed: what is judged is what the endpoint actually said."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.stages.evaluation import evaluate
from mlpipeline.stages.monitor.drift import class_labels
from mlpipeline.tasks import CLASSIFICATION, METRICS

_TRUE = {"1", "true"}
_FALSE = {"0", "false"}


@dataclass(frozen=True)
class LiveScore:
    """Every metric of the task on the scored rows (``metrics``), the judged one (``metric``) among them."""

    metric: str
    rows: int
    metrics: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def score(self) -> float | None:
        value = self.metrics.get(self.metric)
        return None if value is None or math.isnan(value) else value


class _Replayed:
    """The endpoint's logged answers, presented the way :func:`evaluate` asks a model for them."""

    def __init__(self, predicted: np.ndarray, probabilities: np.ndarray, classes: list[Any]) -> None:
        self._predicted, self._probabilities, self.classes_ = predicted, probabilities, np.asarray(classes)

    def predict(self, features: Any) -> np.ndarray:
        return self._predicted

    def predict_proba(self, features: Any) -> np.ndarray:
        return self._probabilities


def _binary(values: pd.Series, positive_label: str | None) -> pd.Series:
    """0/1 as the model predicts them: "1"/"true" or the source's positive label are 1, any other label is 0 (a
    binary target has one other label); missing stays missing."""
    text = class_labels(values).str.strip().str.lower()
    positive = {*_TRUE, *([positive_label.strip().lower()] if positive_label else [])}
    result = pd.Series(np.where(text.isin(positive), 1.0, 0.0), index=values.index)
    return result.where(text != "<missing>")


def _probability_matrix(task: str, probabilities: pd.Series, classes: list[str]) -> np.ndarray | None:
    """Per row, the probability of each class in ``classes`` order; None if any row lacks them."""
    try:
        if task == "binary":
            positive = np.asarray([float(p) for p in probabilities], dtype=float)
            matrix = np.column_stack([1.0 - positive, positive])
        else:
            matrix = np.asarray([[float(row[c]) for c in classes] for row in probabilities], dtype=float)
    except (TypeError, KeyError, ValueError):
        return None
    return matrix if np.isfinite(matrix).all() else None


def live_score(
    outcomes: pd.DataFrame, *, task: str, metric: str, classes: list[Any], positive_label: str | None
) -> LiveScore:
    """Score ``outcomes`` (columns ``prediction``, ``probabilities``, ``actual``) on every metric of ``task``."""
    notes: list[str] = []
    if task == "regression":
        actual = pd.to_numeric(outcomes["actual"], errors="coerce")
        predicted = pd.to_numeric(outcomes["prediction"], errors="coerce")
        usable = actual.notna() & predicted.notna()
        probabilities, labels = np.empty((int(usable.sum()), 0)), []
    elif task == "binary":
        actual = _binary(outcomes["actual"], positive_label)
        predicted = _binary(outcomes["prediction"], positive_label)
        usable = actual.notna() & predicted.notna()
        labels = [0, 1]
    else:
        actual, predicted = class_labels(outcomes["actual"]), class_labels(outcomes["prediction"])
        usable = actual != "<missing>"
        labels = [str(c) for c in class_labels(classes)]
    dropped = len(outcomes) - int(usable.sum())
    if dropped:
        notes.append(f"{dropped} feedback row(s) without a usable actual value or answer were left out")
    actual, predicted = actual[usable].reset_index(drop=True), predicted[usable].reset_index(drop=True)
    if task in CLASSIFICATION:
        if task == "binary":
            actual, predicted = actual.astype("int64"), predicted.astype("int64")
        probabilities = _probability_matrix(task, outcomes["probabilities"][usable], labels)
        if probabilities is None:
            # Answers logged without probabilities: the label metrics only.
            notes.append("some answers were logged without probabilities: probability metrics are not computed")
            probabilities = (np.asarray(predicted)[:, None] == np.asarray(labels)[None, :]).astype(float)
    if len(actual) == 0:
        return LiveScore(metric, 0, {}, tuple(notes))
    model = _Replayed(np.asarray(predicted), probabilities, labels)
    scores = evaluate(model, pd.DataFrame(index=actual.index), actual, task, classes=labels or None)
    faked = any("probabilities" in note for note in notes)
    metrics = {
        name: float(value)
        for name, value in scores.items()
        if isinstance(value, float) and not (faked and name in METRICS and METRICS[name].needs_probabilities)
    }
    return LiveScore(metric, len(actual), metrics, tuple(notes))
