"""Drift statistics: PSI and two-sample KS per feature, the target and the model's predictions, between reference
(the previous champion's training data) and current data.

A feature drifts when PSI > ``psi_threshold`` or (numeric/date) the KS p-value < ``ks_pvalue``. Dates are compared
as days since 1970-01-01; booleans and categories by PSI over their labels. The target and the predictions follow
the task: classes (binary, multiclass: the class mix, by PSI) or numbers (regression: PSI and KS). All functions
here are pure (predictions: given the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mlpipeline.config import ColumnSpec, ColumnType, DatasetSchema
from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.numbers import to_float_array
from mlpipeline.tasks import CLASSIFICATION

# Floor for empty bins: keeps PSI finite (log of 0) while still heavily penalising a bin that emptied or filled.
PSI_EPSILON = 1e-4
_MISSING = "<missing>"
_NEW_CATEGORIES_KEPT = 20
_CLASS_SHARES_KEPT = 20  # the classes whose share moved most (a target may have up to MAX_CLASSES)
# Predictions are made on at most this many rows of each side: enough for PSI over 10 bins, cheap to predict.
PREDICTION_SAMPLE_ROWS = 2000
_KIND: dict[ColumnType, str] = {
    "numeric": "numeric",
    "integer": "numeric",
    "categorical": "categorical",
    "boolean": "boolean",
    "date": "date",
}


# ------------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------------


def _psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    p = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    q = np.maximum(current_counts / max(current_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def _as_float(values: Any) -> np.ndarray:
    return to_float_array(values)


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


def _mean(values: np.ndarray) -> float | None:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if len(valid) else None


def _missing_fraction(values: Any) -> float:
    return float(pd.isna(pd.Series(values)).mean()) if len(values) else math.nan


def finite_or_none(value: Any) -> Any:
    """NaN and infinities as None (strict JSON, and "no verdict" rather than a number)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ------------------------------------------------------------------------------------------------------------
# Per-feature drift
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """How one declared feature moved. Not ``compared`` when it is absent from a side or a side has no rows."""

    kind: str  # numeric | categorical | boolean | date
    psi: float | None = None
    drifted: bool = False
    compared: bool = False
    missing_reference: float | None = None
    missing_current: float | None = None
    ks_statistic: float | None = None  # numeric and date only, like the KS fields below
    ks_pvalue: float | None = None
    mean_reference: float | None = None
    mean_current: float | None = None
    new_categories: tuple[str, ...] = ()  # categorical and boolean: current labels the reference never had
    note: str | None = None
    # Classes (target, predictions): (label, share in reference, share in current), the largest moves first.
    class_shares: tuple[tuple[str, float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report entry: only the fields that apply to this kind of feature."""
        entry: dict[str, Any] = {"kind": self.kind, "psi": self.psi, "drifted": self.drifted}
        if self.compared:
            entry.update(missing_reference=self.missing_reference, missing_current=self.missing_current)
            if self.kind in ("numeric", "date"):
                entry.update(
                    ks_statistic=self.ks_statistic,
                    ks_pvalue=self.ks_pvalue,
                    mean_reference=self.mean_reference,
                    mean_current=self.mean_current,
                )
        if self.new_categories:
            entry["new_categories"] = list(self.new_categories)
        if self.class_shares:
            entry["class_shares"] = {label: {"reference": r, "current": c} for label, r, c in self.class_shares}
        if self.note is not None:
            entry["note"] = self.note
        return entry

    def alert(self, name: str, psi_threshold: float, ks_pvalue: float) -> str | None:
        """What to tell about this feature, if anything: why it drifted, or why it was not compared."""
        return self.alert_about(f"{self.kind} feature {name!r}", f"feature {name!r}", psi_threshold, ks_pvalue)

    def alert_about(self, drifted: str, subject: str, psi_threshold: float, ks_pvalue: float) -> str | None:
        """The alert, naming what drifted (``drifted``) or what was not compared (``subject``)."""
        if self.drifted:
            reasons = []
            if self.psi is not None and self.psi > psi_threshold:
                reasons.append(f"PSI {self.psi:.3f} > {psi_threshold:g}")
            if self.ks_pvalue is not None and self.ks_pvalue < ks_pvalue:
                reasons.append(f"KS p-value {self.ks_pvalue:.2g} < {ks_pvalue:g}")
            psi = f"PSI {self.psi:.3f}" if self.psi is not None else "PSI n/a"
            return f"drift in {drifted}: {'; '.join(reasons) or psi}"
        if self.psi is None and self.note:
            return f"{subject} was not compared for drift: {self.note}"
        return None


def feature_drift(
    column: ColumnSpec, reference: pd.DataFrame, current: pd.DataFrame, psi_threshold: float, ks_pvalue: float
) -> FeatureDrift:
    """The drift of declared feature ``column`` from ``reference`` to ``current``."""
    kind = _KIND[column.type]
    absent = [side for side, frame in (("reference", reference), ("current", current)) if column.name not in frame]
    if absent or len(reference) == 0 or len(current) == 0:
        note = f"missing from the {' and '.join(absent)} data" if absent else "no rows to compare"
        return FeatureDrift(kind, note=note)
    ref, cur = reference[column.name], current[column.name]
    if kind in ("numeric", "date"):
        return _numeric_drift(kind, ref, cur, psi_threshold, ks_pvalue)
    return _label_drift(kind, ref, cur, psi_threshold)


def _numeric_drift(kind: str, ref: pd.Series, cur: pd.Series, psi_threshold: float, ks_pvalue: float) -> FeatureDrift:
    ref_values = _days(ref) if kind == "date" else _as_float(ref)
    cur_values = _days(cur) if kind == "date" else _as_float(cur)
    psi = population_stability_index(ref_values, cur_values)
    statistic, pvalue = ks_test(ref_values, cur_values)
    return FeatureDrift(
        kind,
        psi=finite_or_none(psi),
        # NaN (an all-missing side) compares False: no KS verdict then, PSI still sees the missing values.
        drifted=bool(psi > psi_threshold or pvalue < ks_pvalue),
        compared=True,
        missing_reference=finite_or_none(_missing_fraction(ref)),
        missing_current=finite_or_none(_missing_fraction(cur)),
        ks_statistic=finite_or_none(statistic),
        ks_pvalue=finite_or_none(pvalue),
        mean_reference=finite_or_none(_mean(ref_values)),
        mean_current=finite_or_none(_mean(cur_values)),
        note="compared as days since 1970-01-01" if kind == "date" else None,
    )


def _label_drift(kind: str, ref: pd.Series, cur: pd.Series, psi_threshold: float) -> FeatureDrift:
    ref_labels = _booleans_as_labels(ref) if kind == "boolean" else ref
    cur_labels = _booleans_as_labels(cur) if kind == "boolean" else cur
    psi = categorical_psi(ref_labels, cur_labels)
    new = sorted(set(_category_labels(cur_labels)) - set(_category_labels(ref_labels)))
    return FeatureDrift(
        kind,
        psi=finite_or_none(psi),
        drifted=bool(psi > psi_threshold),
        compared=True,
        missing_reference=finite_or_none(_missing_fraction(ref)),
        missing_current=finite_or_none(_missing_fraction(cur)),
        new_categories=tuple(new[:_NEW_CATEGORIES_KEPT]),
    )


# ------------------------------------------------------------------------------------------------------------
# The target and the predictions, by task
# ------------------------------------------------------------------------------------------------------------


def _class_text(value: Any) -> str:
    """A class label as text, the same whatever column type carried it: 2, 2.0, "2" and np.int64(2) are "2"."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return _MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def class_labels(values: Any) -> pd.Series:
    """Class labels (strings or numbers, as a target column or ``predict`` holds them) as comparable text."""
    return pd.Series(values, dtype=object).map(_class_text).astype(str)


def _class_shares(reference: pd.Series, current: pd.Series) -> tuple[tuple[str, float, float], ...]:
    ref = reference.value_counts(normalize=True)
    cur = current.value_counts(normalize=True)
    labels = sorted(set(ref.index) | set(cur.index))
    shares = [(label, round(float(ref.get(label, 0.0)), 6), round(float(cur.get(label, 0.0)), 6)) for label in labels]
    shares.sort(key=lambda share: -abs(share[2] - share[1]))  # stable: equal moves stay in label order
    return tuple(shares[:_CLASS_SHARES_KEPT])


def outcome_drift(task: str, reference: Any, current: Any, psi_threshold: float, ks_pvalue: float) -> FeatureDrift:
    """How a target or prediction distribution moved: the class mix (classification, by PSI over the labels) or
    the numbers (regression: PSI and KS)."""
    ref, cur = pd.Series(reference), pd.Series(current)
    if len(ref) == 0 or len(cur) == 0:
        return FeatureDrift(outcome_kind(task), note="no rows to compare")
    if task not in CLASSIFICATION:
        return _numeric_drift("numeric", ref, cur, psi_threshold, ks_pvalue)
    ref_labels, cur_labels = class_labels(ref), class_labels(cur)
    psi = categorical_psi(ref_labels, cur_labels)
    return FeatureDrift(
        "categorical",
        psi=finite_or_none(psi),
        drifted=bool(psi > psi_threshold),
        compared=True,
        missing_reference=finite_or_none(_missing_fraction(ref)),
        missing_current=finite_or_none(_missing_fraction(cur)),
        new_categories=tuple(sorted(set(cur_labels) - set(ref_labels))[:_NEW_CATEGORIES_KEPT]),
        class_shares=_class_shares(ref_labels, cur_labels),
    )


def outcome_kind(task: str) -> str:
    return "categorical" if task in CLASSIFICATION else "numeric"


def target_drift(
    task: str, target: str, reference: pd.DataFrame, current: pd.DataFrame, psi_threshold: float, ks_pvalue: float
) -> FeatureDrift:
    """The drift of the target column ``target`` (its class mix, or its numbers for regression)."""
    absent = [side for side, frame in (("reference", reference), ("current", current)) if target not in frame]
    if absent:
        return FeatureDrift(outcome_kind(task), note=f"missing from the {' and '.join(absent)} data")
    return outcome_drift(task, reference[target], current[target], psi_threshold, ks_pvalue)


def model_input(frame: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """The feature columns as the trained pipeline takes them: integers and booleans (0/1) as floats."""
    missing = [name for name in schema.feature_names if name not in frame.columns]
    if missing:
        raise ValueError(f"lacks feature column(s) {missing}")
    features = frame[schema.feature_names].copy()
    for name in schema.columns_of_type("integer"):
        features[name] = _as_float(features[name])
    for name in schema.columns_of_type("boolean"):
        features[name] = _booleans_as_labels(features[name]).map({"true": 1.0, "false": 0.0}).astype("float64")
    return features


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    # Seeded: the same data gives the same sample, so a rerun reports the same numbers.
    return frame.sample(n=rows, random_state=0) if len(frame) > rows else frame


def prediction_drift(
    model: Any,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: DatasetSchema,
    task: str,
    *,
    psi_threshold: float,
    ks_pvalue: float,
    sample_rows: int = PREDICTION_SAMPLE_ROWS,
    model_label: str = "the model",
) -> FeatureDrift:
    """How ``model``'s predictions moved from (a sample of) the ``reference`` rows to the ``current`` rows.

    Not compared (with the reason as the note) when a side has no rows or cannot be predicted on.
    """
    predicted: dict[str, np.ndarray] = {}
    for side, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            return FeatureDrift(outcome_kind(task), note=f"no {side} rows to predict on")
        try:
            predicted[side] = np.asarray(model.predict(model_input(_sample(frame, sample_rows), schema)))
        except Exception as exc:  # whatever the model raises: this comparison is lost, not the others
            note = f"{model_label} cannot predict on the {side} rows: {type(exc).__name__}: {exc}"
            return FeatureDrift(outcome_kind(task), note=note[:500])
    drift = outcome_drift(task, predicted["reference"], predicted["current"], psi_threshold, ks_pvalue)
    counts = {side: len(values) for side, values in predicted.items()}
    rows = f"{model_label} predicted on {counts['reference']} reference and {counts['current']} current rows"
    return replace(drift, note=rows if drift.note is None else f"{drift.note}; {rows}")


# ------------------------------------------------------------------------------------------------------------
# The report: features, target, predictions
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReport:
    """The drift of every declared feature, the target and the deployed model's predictions (features empty when
    the data could not be read; target and predictions None when not measured)."""

    reference_path: str
    current_path: str
    psi_threshold: float
    ks_pvalue_threshold: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    task: str | None = None
    target_name: str | None = None
    target: FeatureDrift | None = None
    predictions: FeatureDrift | None = None

    @classmethod
    def measure(
        cls,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        schema: DatasetSchema,
        *,
        psi_threshold: float,
        ks_pvalue: float,
        reference_path: str = "",
        current_path: str = "",
        task: str | None = None,
    ) -> DriftReport:
        """Every feature's drift, and the target's when ``task`` is given (its kind follows the task)."""
        features = {c.name: feature_drift(c, reference, current, psi_threshold, ks_pvalue) for c in schema.columns}
        target = (
            None if task is None else target_drift(task, schema.target, reference, current, psi_threshold, ks_pvalue)
        )
        return cls(reference_path, current_path, psi_threshold, ks_pvalue, features, task, schema.target, target)

    def with_predictions(self, predictions: FeatureDrift) -> DriftReport:
        return replace(self, predictions=predictions)

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, feature in self.features.items() if feature.drifted]

    @property
    def target_drifted(self) -> bool | None:
        """None: the target was not compared."""
        return None if self.target is None or not self.target.compared else self.target.drifted

    @property
    def predictions_drifted(self) -> bool | None:
        """None: the predictions were not compared."""
        return None if self.predictions is None or not self.predictions.compared else self.predictions.drifted

    @property
    def max_psi(self) -> float | None:
        """The largest PSI of a feature (the target and predictions have their own entries)."""
        psis = [feature.psi for feature in self.features.values() if feature.psi is not None]
        return max(psis) if psis else None

    def alerts(self) -> list[str]:
        found = [f.alert(name, self.psi_threshold, self.ks_pvalue_threshold) for name, f in self.features.items()]
        thresholds = (self.psi_threshold, self.ks_pvalue_threshold)
        if self.target is not None:
            mix = "class mix" if self.target.kind == "categorical" else "numeric"
            target = f"target {self.target_name!r}"
            found.append(self.target.alert_about(f"the {target} ({mix})", target, *thresholds))
        if self.predictions is not None:
            mix = "class mix" if self.predictions.kind == "categorical" else "numeric"
            drifted = f"the deployed model's predictions ({mix})"
            found.append(
                self.predictions.alert_about(drifted, "the deployed model's prediction distribution", *thresholds)
            )
        return [alert for alert in found if alert is not None]

    def to_dict(self) -> dict[str, Any]:
        target = None if self.target is None else {"column": self.target_name, **self.target.to_dict()}
        return {
            "reference_path": self.reference_path,
            "current_path": self.current_path,
            "psi_threshold": self.psi_threshold,
            "ks_pvalue_threshold": self.ks_pvalue_threshold,
            "drifted_features": self.drifted_features,
            "max_psi": self.max_psi,
            "features": {name: feature.to_dict() for name, feature in self.features.items()},
            "task": self.task,
            "target": target,
            "predictions": None if self.predictions is None else self.predictions.to_dict(),
        }


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
    report = DriftReport.measure(reference, current, schema, psi_threshold=psi_threshold, ks_pvalue=ks_pvalue)
    return {name: feature.to_dict() for name, feature in report.features.items()}
