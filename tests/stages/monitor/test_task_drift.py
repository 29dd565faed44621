"""Drift of the target and of the model's predictions, compared the way the task says (classes or numbers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipeline.stages.monitor import DriftReport, class_labels, outcome_drift, prediction_drift, target_drift
from tests import model_factory as mf
from tests.model_factory import TARGET
from tests.stages.monitor.support import (
    AREA,
    FRUIT,
    FRUIT_SCHEMA,
    PRICE,
    PRICE_SCHEMA,
    ROOMS,
    SCHEMA,
    SHADE,
    SHIFTED_MIX,
    SIZE,
    fruit_frame,
    fruit_model,
    price_frame,
    price_model,
)

THRESHOLDS = {"psi_threshold": 0.2, "ks_pvalue": 0.01}


def _measure(reference: pd.DataFrame, current: pd.DataFrame, schema: object, task: str | None) -> DriftReport:
    return DriftReport.measure(reference, current, schema, task=task, **THRESHOLDS)  # type: ignore[arg-type]


def test_binary_features_are_unchanged_and_the_target_is_compared_as_classes() -> None:
    reference, current = mf.make_frame(3000, seed=1), mf.make_frame(3000, seed=2)
    binary = _measure(reference, current, SCHEMA, "binary")
    assert binary.features == _measure(reference, current, SCHEMA, None).features  # as before the task existed
    assert binary.task == "binary" and binary.target is not None and binary.target_drifted is False
    entry = binary.to_dict()["target"]
    assert entry["column"] == TARGET and entry["kind"] == "categorical" and "ks_pvalue" not in entry
    assert set(entry["class_shares"]) == {"0", "1"} and binary.alerts() == []

    flipped = current.copy()
    flipped.loc[flipped.index[:1500], TARGET] = 1  # many more churners (~37% -> ~70%): the mix moved
    moved = _measure(reference, flipped, SCHEMA, "binary")
    assert moved.target_drifted is True and moved.drifted_features == []
    assert moved.alerts() == [f"drift in the target {TARGET!r} (class mix): PSI {moved.target.psi:.3f} > 0.2"]


def test_multiclass_string_labels_flag_a_shifted_mix_only() -> None:
    reference = fruit_frame(3000, seed=1)
    same = _measure(reference, fruit_frame(3000, seed=2), FRUIT_SCHEMA, "multiclass")
    assert same.target_drifted is False and same.target.psi < 0.02 and same.alerts() == []
    shares = same.to_dict()["target"]["class_shares"]
    assert set(shares) == {"apple", "banana", "cherry (sour)"}
    assert shares["apple"]["reference"] == pytest.approx(0.5, abs=0.03)

    shifted = _measure(reference, fruit_frame(3000, seed=2, mix=SHIFTED_MIX), FRUIT_SCHEMA, "multiclass")
    assert shifted.target_drifted is True and shifted.target.psi > 0.2
    # The classes that moved most come first: cherries went from 20% to 60%, apples from 50% to 15%.
    assert list(shifted.to_dict()["target"]["class_shares"])[:2] == ["cherry (sour)", "apple"]
    assert any(a.startswith(f"drift in the target {FRUIT!r} (class mix): PSI") for a in shifted.alerts())
    assert f"drift in numeric feature {SIZE!r}" in " ".join(shifted.alerts())  # odd names reported as they are


def test_class_labels_are_the_same_whatever_the_column_type() -> None:
    assert list(class_labels([1, 2.0, "3", np.int64(4), np.float64(5.5), None, np.nan, True])) == [
        "1",
        "2",
        "3",
        "4",
        "5.5",
        "<missing>",
        "<missing>",
        "true",
    ]
    # An int64 column in one run and float64 in the next hold the same classes: no drift, no new class.
    ints = pd.Series(np.random.default_rng(0).integers(0, 3, 2000))
    drift = outcome_drift("multiclass", ints, ints.astype("float64"), **THRESHOLDS)
    assert drift.psi == pytest.approx(0.0, abs=1e-12) and drift.new_categories == ()
    new = outcome_drift("multiclass", ints, pd.concat([ints, pd.Series([7] * 500)]), **THRESHOLDS)
    assert new.new_categories == ("7",) and new.drifted


def test_regression_target_shift_is_flagged_by_psi_and_ks() -> None:
    reference = price_frame(3000, seed=1)
    same = _measure(reference, price_frame(3000, seed=2), PRICE_SCHEMA, "regression")
    assert same.target.kind == "numeric" and same.target_drifted is False and same.alerts() == []
    assert same.target.ks_pvalue > 0.01 and same.target.psi < 0.1

    shifted = _measure(reference, price_frame(3000, seed=2, area_shift=25), PRICE_SCHEMA, "regression")
    target = shifted.target
    assert shifted.target_drifted is True and target.psi > 0.2 and target.ks_pvalue < 1e-6
    assert target.mean_current > target.mean_reference
    entry = shifted.to_dict()["target"]
    assert entry["column"] == PRICE and {"ks_statistic", "ks_pvalue", "mean_reference", "mean_current"} <= set(entry)
    alert = next(a for a in shifted.alerts() if "target" in a)
    assert alert.startswith(f"drift in the target {PRICE!r} (numeric): PSI") and "KS p-value" in alert
    assert set(shifted.drifted_features) == {AREA, ROOMS}


def test_a_target_missing_from_a_side_is_reported_not_compared() -> None:
    reference = fruit_frame(500, seed=1)
    drift = target_drift("multiclass", FRUIT, reference.drop(columns=[FRUIT]), reference, **THRESHOLDS)
    assert not drift.compared and drift.note == "missing from the reference data"
    report = _measure(reference, reference.drop(columns=[FRUIT]), FRUIT_SCHEMA, "multiclass")
    assert report.target_drifted is None
    assert f"target {FRUIT!r} was not compared for drift: missing from the current data" in report.alerts()


def test_multiclass_predictions_drift_with_the_rows_they_are_made_on() -> None:
    model = fruit_model(fruit_frame(1500, seed=0))
    reference = fruit_frame(3000, seed=1)
    same = prediction_drift(model, reference, fruit_frame(800, seed=2), FRUIT_SCHEMA, "multiclass", **THRESHOLDS)
    assert same.compared and not same.drifted and same.kind == "categorical"
    assert set(same.to_dict()["class_shares"]) == {"apple", "banana", "cherry (sour)"}
    # At most sample_rows rows of each side are predicted on.
    assert same.note == "the model predicted on 2000 reference and 800 current rows"

    current = fruit_frame(800, seed=2, mix=SHIFTED_MIX)
    shifted = prediction_drift(model, reference, current, FRUIT_SCHEMA, "multiclass", **THRESHOLDS, sample_rows=300)
    assert shifted.drifted and shifted.psi > 0.2
    assert shifted.note == "the model predicted on 300 reference and 300 current rows"
    report = _measure(reference, current, FRUIT_SCHEMA, "multiclass").with_predictions(shifted)
    assert report.predictions_drifted is True
    assert any(a.startswith("drift in the deployed model's predictions (class mix): PSI") for a in report.alerts())


def test_regression_predictions_drift_by_psi_and_ks() -> None:
    model = price_model(price_frame(1500, seed=0))
    reference = price_frame(3000, seed=1)
    same = prediction_drift(model, reference, price_frame(1000, seed=2), PRICE_SCHEMA, "regression", **THRESHOLDS)
    assert same.kind == "numeric" and same.compared and not same.drifted
    current = price_frame(1000, seed=2, area_shift=25)
    shifted = prediction_drift(model, reference, current, PRICE_SCHEMA, "regression", **THRESHOLDS)
    assert shifted.drifted and shifted.psi > 0.2 and shifted.ks_pvalue < 1e-6
    assert shifted.mean_current > shifted.mean_reference


def test_predictions_not_made_are_explained() -> None:
    model = fruit_model(fruit_frame(500, seed=0))
    reference = fruit_frame(500, seed=1)
    no_shade = prediction_drift(
        model, reference.drop(columns=[SHADE]), reference, FRUIT_SCHEMA, "multiclass", **THRESHOLDS
    )
    assert not no_shade.compared and no_shade.psi is None
    assert (
        no_shade.note
        == f"the model cannot predict on the reference rows: ValueError: lacks feature column(s) {[SHADE]}"
    )
    empty = prediction_drift(model, reference, reference.iloc[:0], FRUIT_SCHEMA, "multiclass", **THRESHOLDS)
    assert empty.note == "no current rows to predict on"
    report = _measure(reference, reference, FRUIT_SCHEMA, "multiclass").with_predictions(no_shade)
    assert report.predictions_drifted is None
    assert report.alerts() == [
        f"the deployed model's prediction distribution was not compared for drift: {no_shade.note}"
    ]
