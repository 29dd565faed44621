"""The target column: what pass 1 saw of it (:class:`TargetStats`), what kind of problem it makes (:func:`plan_target`
decides an ``auto`` task, picks the positive class of a binary one and refuses targets nothing can be learnt from),
and the values the processed data holds for it (:meth:`TargetPlan.values`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlpipeline.config import DatasetSchema
from mlpipeline.numbers import to_numeric
from mlpipeline.stages.etl.coerce import mask, parse_numbers
from mlpipeline.stages.etl.result import EtlError
from mlpipeline.tasks import MAX_CLASSES, decide_task

MAX_DISTINCT_LABELS = 10_000  # past this many distinct values a target is not a label: counts stop here
# An unset positive_label: the first of these the target has (numbers compare as numbers, text ignoring case).
POSITIVE_TOKENS = ("1", "true", "yes", "y", "t")
_SHOWN_LABELS = 10
_EXACT_INTEGERS = 2**53  # whole numbers a float64 (and an int64) holds exactly
_SHOWN_LABEL_CHARS = 50


@dataclass
class TargetStats:
    """The target values of pass 1's clean rows: whether all are numbers, and each distinct value's count (as a
    number and as text; exact up to ``MAX_DISTINCT_LABELS`` distinct values)."""

    rows: int = 0
    all_numbers: bool = True  # every value parses as a number (inf included, as labels compare)
    all_finite: bool = True  # ... and none of those numbers is infinite
    all_integral: bool = True  # ... and all are whole numbers (that an int64 holds exactly)
    numbers: dict[float, int] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)

    def add(self, text: pa.Array, numbers: np.ndarray) -> None:
        """Count one chunk's clean target values (``text`` without nulls, ``numbers`` parsed from it)."""
        if not len(text):
            return
        self.rows += len(text)
        is_number = ~np.isnan(numbers)
        finite = np.isfinite(numbers)
        self.all_numbers &= bool(is_number.all())
        self.all_finite &= bool(finite[is_number].all())
        whole = numbers[finite]
        self.all_integral &= bool(((whole % 1 == 0) & (np.abs(whole) < _EXACT_INTEGERS)).all())
        # Past the cap the counts are not used: a chunk adds at most enough values to pass it.
        if len(self.numbers) <= MAX_DISTINCT_LABELS:
            counts = pd.Series(numbers[is_number] + 0.0, copy=False).value_counts(sort=False)  # -0.0 is 0.0
            _merge(self.numbers, {float(k): int(v) for k, v in counts.iloc[: MAX_DISTINCT_LABELS + 1].items()})
        if len(self.texts) <= MAX_DISTINCT_LABELS:
            counted = pc.value_counts(text)[: MAX_DISTINCT_LABELS + 1].to_pylist()
            _merge(self.texts, {item["values"]: item["counts"] for item in counted})

    @property
    def numeric(self) -> bool:
        """Whether the values are quantities or numeric labels: all finite numbers."""
        return self.all_numbers and self.all_finite

    def labels(self, as_numbers: bool) -> dict[Any, int]:
        return self.numbers if as_numbers else self.texts


def _merge(total: dict[Any, int], more: dict[Any, int]) -> None:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count


@dataclass(frozen=True)
class TargetPlan:
    """How the target is written: ``binary`` 0/1 int64 (1 = ``positive_label``), ``multiclass`` the labels as in
    the data (int64 if all whole numbers, float64 if numbers, else text), ``regression`` float64."""

    task: str
    as_numbers: bool  # labels compare as numbers ("1" and "1.0" are one label)
    integral: bool = False
    positive_label: str | None = None  # binary: the label (as text) that becomes 1
    positive_from: str | None = None  # binary: how it was chosen

    def values(self, text: pa.Array) -> pa.Array:
        """The processed target of staged target values (text, no nulls)."""
        if self.task == "binary":
            if self.as_numbers:
                positive = parse_numbers(text) == _as_number(self.positive_label)
            else:
                positive = mask(pc.equal(text, pa.scalar(self.positive_label, pa.string())))
            return pa.array(positive.astype(np.int64))
        if self.task == "regression" or self.as_numbers:
            numbers = parse_numbers(text)
            return pa.array(numbers.astype(np.int64) if self.task == "multiclass" and self.integral else numbers)
        return text


def plan_target(stats: TargetStats, task: str, schema: DatasetSchema) -> TargetPlan:
    """The task (``auto`` decided from ``stats``) and how to write the target; refuses a target that does not make
    the task: too many classes, a single class, a constant quantity."""
    if task == "auto":
        task = _decide(stats, schema.target)
    if task == "regression":
        _refuse_constant(stats, schema.target)
        return TargetPlan("regression", as_numbers=True)
    if task == "multiclass":
        plan = TargetPlan("multiclass", as_numbers=stats.numeric, integral=stats.all_integral)
        _refuse_too_many_classes(stats, plan.as_numbers, schema.target)
        _refuse_single_class(stats, plan.as_numbers, schema.target)
        return plan
    return _plan_binary(stats, schema)


def _decide(stats: TargetStats, target: str) -> str:
    """``task: auto``: numbers with many distinct values, or any fractional one, are a quantity; else labels."""
    labels = stats.labels(stats.numeric)
    if stats.numeric and len(labels) > MAX_DISTINCT_LABELS:
        return "regression"
    task = decide_task(numeric=stats.numeric, integral=stats.all_integral, distinct=len(labels))
    if task != "regression":
        _refuse_too_many_classes(stats, stats.numeric, target)
    return task


def _refuse_too_many_classes(stats: TargetStats, as_numbers: bool, target: str) -> None:
    labels = stats.labels(as_numbers)
    if len(labels) > MAX_CLASSES:
        raise EtlError(
            f"target {target!r} has {_count(labels)} distinct values ({_seen(labels)}): it looks like an id or free"
            f" text, not a class label (at most {MAX_CLASSES} classes). Set dataset_schema.target to the column to"
            " predict, or task to regression if it is a quantity"
        )


def _refuse_single_class(stats: TargetStats, as_numbers: bool, target: str) -> None:
    labels = stats.labels(as_numbers)
    if stats.rows and len(labels) < 2:
        raise EtlError(
            f"target {target!r} holds only the class {_seen(labels)} in all {stats.rows} clean rows; a classifier"
            " needs examples of at least two classes"
        )


def _refuse_constant(stats: TargetStats, target: str) -> None:
    if stats.rows and len(stats.numbers) < 2:
        raise EtlError(
            f"target {target!r} is {_seen(stats.numbers)} in all {stats.rows} clean rows: a constant, nothing for a"
            " regression to learn"
        )


def _plan_binary(stats: TargetStats, schema: DatasetSchema) -> TargetPlan:
    declared = schema.positive_label
    # Labels compare as numbers when all are numbers (and a declared positive label is one): "1" and "1.0" agree.
    as_numbers = stats.all_numbers and (not math.isnan(_as_number(declared)) if declared else stats.all_finite)
    labels = stats.labels(as_numbers)
    if len(labels) > 2:
        raise EtlError(
            f"target {schema.target!r} has {_count(labels)} distinct values ({_seen(labels)}); task binary needs"
            " exactly two. Set task to multiclass (or auto) to learn them all"
        )
    if declared is not None:
        _refuse_missing_classes(stats, as_numbers, schema)
        return TargetPlan("binary", as_numbers, positive_label=declared, positive_from="dataset_schema.positive_label")
    if not stats.rows:
        return TargetPlan("binary", as_numbers)  # no clean rows: min_rows refuses them
    _refuse_single_class(stats, as_numbers, schema.target)
    positive, reason = _pick_positive(labels)
    return TargetPlan("binary", as_numbers, positive_label=_label_text(positive), positive_from=reason)


def _pick_positive(labels: dict[Any, int]) -> tuple[Any, str]:
    """The positive class of two labels: a 1 / true / yes one, else the rarer (a tie: the larger label)."""
    for token in POSITIVE_TOKENS:
        for label in labels:
            if str(label).lower() == token or _as_number(label) == _as_number(token):
                return label, f"the label {token} (dataset_schema.positive_label unset)"
    rarer = min(sorted(labels, reverse=True), key=lambda label: labels[label])
    return rarer, "the rarer class (dataset_schema.positive_label unset)"


def _refuse_missing_classes(stats: TargetStats, as_numbers: bool, schema: DatasetSchema) -> None:
    """Refuse clean rows that lack the declared positive class or the negative one: nothing a classifier could
    learn, and a ``positive_label`` that never occurs is almost always a setting that does not match the source."""
    labels = stats.labels(as_numbers)
    key = _as_number(schema.positive_label) if as_numbers else schema.positive_label
    positives = labels.get(key, 0)
    if not stats.rows or 0 < positives < stats.rows:
        return
    if not positives:
        raise EtlError(
            f"positive_label {schema.positive_label!r} never occurs in target {schema.target!r} (in {stats.rows}"
            f" clean rows); values seen: {_seen(labels)}. Set dataset_schema.positive_label to the positive class"
        )
    raise EtlError(
        f"target {schema.target!r} holds only the positive class {schema.positive_label!r} in all {stats.rows}"
        f" clean rows (values seen: {_seen(labels)}); a classifier needs examples of both classes"
    )


def _as_number(value: Any) -> float:
    """A label as a number (NaN if it is not one), as ``pd.to_numeric`` reads it."""
    if isinstance(value, (int, float)):
        return float(value)
    return float(to_numeric([value]).iloc[0])


def _label_text(label: Any) -> str:
    """A label as the text that reads back as the same label (``1.0`` -> ``"1"``)."""
    if isinstance(label, float):
        return str(int(label)) if label.is_integer() and abs(label) < _EXACT_INTEGERS else repr(label)
    return str(label)


def _count(labels: dict[Any, int]) -> str:
    return f"more than {MAX_DISTINCT_LABELS}" if len(labels) > MAX_DISTINCT_LABELS else str(len(labels))


def _seen(labels: dict[Any, int]) -> str:
    """The first labels seen, for a message: numbers as written ("1", "0.5"), text quoted and cut short."""
    shown = [_shown(label) for label in list(labels)[:_SHOWN_LABELS]]
    return ", ".join(shown) + (", ..." if len(labels) > _SHOWN_LABELS else "")


def _shown(label: Any) -> str:
    if isinstance(label, (float, np.floating)):
        return f"{float(label):g}"
    return repr(str(label)[:_SHOWN_LABEL_CHARS])
