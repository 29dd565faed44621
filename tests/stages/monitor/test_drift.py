"""Drift statistics: PSI, KS and the per-feature drift report."""

from __future__ import annotations

import numpy as np
import pytest

from mlpipeline.stages.monitor import (
    DriftReport,
    FeatureDrift,
    categorical_psi,
    drift_report,
    ks_test,
    population_stability_index,
)
from tests import model_factory as mf
from tests.model_factory import FEATURES
from tests.stages.monitor.support import SCHEMA


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    assert population_stability_index(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(reference, rng.normal(0, 1, 5000)) < 0.02
    assert population_stability_index(reference, rng.normal(1, 1, 5000)) > 0.2
    # More missing values is a shift too (they have their own bin).
    gappy = rng.normal(0, 1, 5000)
    gappy[:1500] = np.nan
    assert population_stability_index(reference, gappy) > 0.2
    # Discrete data: tied quantiles collapse into fewer bins, still ~0 for the same distribution.
    counts = rng.poisson(1.5, 5000)
    assert population_stability_index(counts, rng.poisson(1.5, 5000)) < 0.02
    assert population_stability_index(counts, rng.poisson(4, 5000)) > 0.2
    with pytest.raises(ValueError):
        population_stability_index([], [1.0])


def test_categorical_psi() -> None:
    rng = np.random.default_rng(1)
    values = ["a", "b", "c"]
    reference = rng.choice(values, 4000, p=[0.5, 0.3, 0.2])
    assert categorical_psi(reference, rng.choice(values, 4000, p=[0.5, 0.3, 0.2])) < 0.01
    assert categorical_psi(reference, rng.choice(values, 4000, p=[0.1, 0.2, 0.7])) > 0.2
    # A category that never occurred before (or missing values) counts, thanks to the epsilon floor.
    assert categorical_psi(reference, np.append(reference[:3000], ["z"] * 1000)) > 0.2
    assert categorical_psi(reference, np.append(reference[:3000], [None] * 1000)) > 0.2


def test_ks_test_separates_shifted_from_same_distribution() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, 2000)
    _, p_same = ks_test(reference, rng.normal(0, 1, 2000))
    statistic, p_shift = ks_test(reference, rng.normal(0.5, 1, 2000))
    assert p_same > 0.01 and p_shift < 1e-6 and statistic > 0.1
    assert all(np.isnan(ks_test(reference, [np.nan, np.nan])))


def test_drift_report_flags_the_shifted_features() -> None:
    reference = mf.make_frame(3000, seed=1)
    same = drift_report(reference, mf.make_frame(3000, seed=2), SCHEMA, 0.2, 0.01)
    assert set(same) == set(FEATURES)
    assert [name for name, entry in same.items() if entry["drifted"]] == []
    assert same["monthly_charges"]["kind"] == "numeric" and same["monthly_charges"]["ks_pvalue"] is not None
    assert same["contract"]["kind"] == "categorical" and "ks_pvalue" not in same["contract"]
    assert same["paperless_billing"]["kind"] == "boolean"
    assert same["signup_date"]["kind"] == "date" and "days" in same["signup_date"]["note"]

    shifted = drift_report(reference, mf.make_frame(3000, seed=3, shift=1.0), SCHEMA, 0.2, 0.01)
    drifted = {name for name, entry in shifted.items() if entry["drifted"]}
    assert {"tenure_months", "monthly_charges", "support_tickets", "contract", "signup_date"} <= drifted
    assert "region" not in drifted  # its distribution did not move
    assert shifted["contract"]["psi"] > 0.2

    partial = drift_report(reference, mf.make_frame(500, seed=4).drop(columns=["region"]), SCHEMA)
    assert partial["region"]["psi"] is None and "current" in partial["region"]["note"]


def test_drift_report_explains_each_alert() -> None:
    reference = mf.make_frame(3000, seed=1)
    shifted = DriftReport.measure(
        reference, mf.make_frame(3000, seed=3, shift=1.0), SCHEMA, psi_threshold=0.2, ks_pvalue=0.01
    )
    assert all(isinstance(feature, FeatureDrift) for feature in shifted.features.values())
    assert shifted.drifted_features == [name for name, f in shifted.features.items() if f.drifted]
    assert shifted.max_psi == max(f.psi for f in shifted.features.values() if f.psi is not None)
    alerts = shifted.alerts()
    assert len(alerts) == len(shifted.drifted_features)
    assert any("'monthly_charges'" in a and "PSI" in a and "KS p-value" in a for a in alerts), alerts
    assert any("'contract'" in a and "PSI" in a and "KS" not in a for a in alerts), alerts
    record = shifted.to_dict()
    assert list(record) == [
        "reference_path",
        "current_path",
        "psi_threshold",
        "ks_pvalue_threshold",
        "drifted_features",
        "max_psi",
        "features",
        "task",
        "target",
        "predictions",
    ]
    assert record["task"] is None and record["target"] is None and record["predictions"] is None  # no task given
    assert record["features"]["contract"] == shifted.features["contract"].to_dict()

    partial = DriftReport.measure(
        reference, reference.drop(columns=["region"]), SCHEMA, psi_threshold=0.2, ks_pvalue=0.01
    )
    assert partial.alerts() == ["feature 'region' was not compared for drift: missing from the current data"]
    assert partial.features["region"].to_dict() == {
        "kind": "categorical",
        "psi": None,
        "drifted": False,
        "note": "missing from the current data",
    }


def test_feature_entries_hold_the_fields_of_their_kind() -> None:
    reference = mf.make_frame(1000, seed=1)
    current = mf.make_frame(1000, seed=2).astype({"contract": object})
    current.loc[:99, "contract"] = "lifetime"  # a category the reference never had
    report = drift_report(reference, current, SCHEMA)
    common = ["kind", "psi", "drifted", "missing_reference", "missing_current"]
    numeric = [*common, "ks_statistic", "ks_pvalue", "mean_reference", "mean_current"]
    assert list(report["monthly_charges"]) == numeric
    assert list(report["signup_date"]) == [*numeric, "note"]
    assert list(report["region"]) == common
    assert list(report["contract"]) == [*common, "new_categories"]
    assert report["contract"]["new_categories"] == ["lifetime"]
