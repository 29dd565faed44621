"""The synthetic churn dataset: schema, determinism (pinned output), dirty-data knobs, drift and learnability."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from mlpipeline.config import default_schema
from mlpipeline.dev.churn_data import COLUMNS, FEATURE_COLUMNS, generate_churn_dataset
from mlpipeline.dev.formats import serialize
from tests.dev.churn_checks import CLEAN, invalid_rows


def psi(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    if reference.dtype == "string" and pd.to_numeric(reference, errors="coerce").isna().mean() > 0.5:
        categories = sorted(set(reference.dropna()) | set(current.dropna()))
        ref = reference.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
        cur = current.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
    else:
        ref_values = pd.to_numeric(reference, errors="coerce").dropna().to_numpy(float)
        cur_values = pd.to_numeric(current, errors="coerce").dropna().to_numpy(float)
        edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        ref = np.histogram(ref_values, edges)[0] / len(ref_values)
        cur = np.histogram(cur_values, edges)[0] / len(cur_values)
    ref, cur = np.clip(ref, 1e-6, None), np.clip(cur, 1e-6, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def fingerprint(frame: pd.DataFrame) -> str:
    """A hash of every column's name, dtype and values (``str`` of a float is its exact shortest repr)."""
    digest = hashlib.sha256()
    for name in frame.columns:
        digest.update(f"{name}:{frame[name].dtype}\n".encode())
        digest.update("\x1f".join(map(str, frame[name].astype(object))).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"rows": 3000, "seed": 11}, "dc67f7bea88e50ae"),
        ({"rows": 3000, "seed": 11, "drift": True}, "385d689453ac8026"),
        (
            {"rows": 2000, "seed": 9, "malformed_rate": 0.2, "missing_rate": 0.05, "duplicate_rate": 0.1},
            "09081671ec8c8a66",
        ),
        ({"rows": 1000, "seed": 3, **CLEAN}, "cbf6d0faf3a26ed5"),
        ({"rows": 1}, "065a959c52caae04"),
        ({"rows": 0}, "e45c483e9e0b4bcf"),
    ],
)
def test_output_is_pinned_for_a_fixed_seed(arguments: dict[str, Any], expected: str) -> None:
    # Any change to the order of random draws, a formula or a dtype changes this hash: a deliberate change of the
    # data must update the pins (and say so in its commit), an accidental one fails here.
    assert fingerprint(generate_churn_dataset(**arguments)) == expected


def test_columns_match_the_default_schema() -> None:
    schema = default_schema()
    frame = generate_churn_dataset(50)
    assert list(FEATURE_COLUMNS) == schema.feature_names
    assert list(frame.columns) == [schema.id_column, *schema.feature_names, schema.target] == list(COLUMNS)


def test_deterministic_for_the_same_arguments_and_seed_sensitive() -> None:
    first = generate_churn_dataset(3000, seed=11, drift=True, malformed_rate=0.05)
    again = generate_churn_dataset(3000, seed=11, drift=True, malformed_rate=0.05)
    pd.testing.assert_frame_equal(first, again)
    other = generate_churn_dataset(3000, seed=12, drift=True, malformed_rate=0.05)
    assert not first.equals(other)
    assert serialize(first, "csv") == serialize(again, "csv")


@pytest.mark.parametrize("rows", [0, 1, 7, 1000, 4321])
def test_exact_row_count(rows: int) -> None:
    frame = generate_churn_dataset(rows, duplicate_rate=0.05)
    assert frame.shape == (rows, len(COLUMNS))
    assert frame.index.equals(pd.RangeIndex(rows))


def test_clean_rows_respect_the_schema_and_churn_is_realistic() -> None:
    frame = generate_churn_dataset(20_000, seed=3, **CLEAN)
    assert not invalid_rows(frame).any()
    assert not frame.isna().any().any()
    assert frame["customer_id"].is_unique
    assert 0.25 <= frame["churned"].mean() <= 0.35
    assert frame["age"].between(18, 100).all()
    assert set(frame["contract"]) == {"month-to-month", "one_year", "two_year"}
    assert set(frame["paperless_billing"]) == {"true", "false"}
    dates = pd.to_datetime(frame["signup_date"], format="%Y-%m-%d")
    assert dates.max() <= pd.Timestamp("2025-06-30")


def test_dirty_data_knobs() -> None:
    rows = 20_000
    frame = generate_churn_dataset(rows, seed=5, missing_rate=0.05, malformed_rate=0.02, duplicate_rate=0.03)
    # Blank cells: ~5 % of feature cells (malformed overrides move it by a hair).
    assert 0.045 <= frame[list(FEATURE_COLUMNS)].isna().to_numpy().mean() <= 0.055
    # Malformed rows: ~2 % of rows are rejectable, and only because of malformation (not blanks).
    invalid = invalid_rows(frame)
    assert 0.015 <= invalid.mean() <= 0.025
    assert frame["churned"].isna().sum() <= invalid.sum()
    # Exact duplicates: precisely the requested count.
    assert frame.duplicated().sum() == round(0.03 * rows)
    assert frame["customer_id"].duplicated().sum() == round(0.03 * rows)

    blanks_only = generate_churn_dataset(5000, seed=5, missing_rate=0.3, malformed_rate=0.0, duplicate_rate=0.0)
    assert not invalid_rows(blanks_only).any()  # blank feature cells are allowed (nullable) ...
    assert blanks_only["churned"].notna().all()  # ... and never hit the target
    assert not invalid_rows(generate_churn_dataset(5000, **CLEAN)).any()


def test_every_kind_of_malformation_occurs() -> None:
    frame = generate_churn_dataset(5000, seed=9, malformed_rate=0.2, missing_rate=0.0, duplicate_rate=0.0)
    numeric = ["age", "tenure_months", "monthly_charges", "total_charges", "support_tickets", "data_usage_gb"]
    as_numbers = {name: pd.to_numeric(frame[name].astype("string"), errors="coerce") for name in numeric}
    assert any(as_numbers[name].isna().any() for name in numeric), "text in a numeric column"
    assert (as_numbers["age"] < 0).any() and (as_numbers["age"] > 100).any()
    assert (as_numbers["monthly_charges"] < 0).any()
    assert frame["churned"].isna().any()
    unknown = {
        name: set(frame[name].dropna()) - set(spec.categories or ["true", "false"])
        for spec in default_schema().columns
        if (name := spec.name) in ("contract", "payment_method", "internet_service", "region", "paperless_billing")
    }
    assert any(unknown.values()), unknown
    assert pd.to_datetime(frame["signup_date"], format="%Y-%m-%d", errors="coerce").isna().any()
    # Nothing the CSV reader would silently turn into "missing" instead of "malformed".
    csv_text = pd.read_csv(io.BytesIO(serialize(frame, "csv")), dtype=str, keep_default_na=True)
    assert invalid_rows(csv_text).sum() == invalid_rows(frame).sum()


def test_drift_shifts_distributions() -> None:
    reference = generate_churn_dataset(20_000, seed=1)
    drifted = generate_churn_dataset(20_000, seed=2, drift=True)
    same = generate_churn_dataset(20_000, seed=2)
    for column in ("age", "monthly_charges", "contract"):
        assert psi(reference[column], drifted[column]) > 0.2, column
        assert psi(reference[column], same[column]) < 0.05, column
    assert psi(reference["region"], drifted["region"]) < 0.05
    charges = pd.to_numeric(drifted["monthly_charges"], errors="coerce").median()
    assert charges > 1.2 * pd.to_numeric(reference["monthly_charges"], errors="coerce").median()


def test_target_is_learnable_but_not_trivial() -> None:
    frame = generate_churn_dataset(20_000, seed=21, **CLEAN)
    features = frame[list(FEATURE_COLUMNS)].drop(columns="signup_date").copy()
    for name in ("contract", "payment_method", "internet_service", "region", "paperless_billing"):
        features[name] = features[name].astype("category").cat.codes
    x_train, x_test, y_train, y_test = train_test_split(
        features.astype(float), frame["churned"].astype(int), test_size=0.25, random_state=0
    )
    with threadpool_limits(1):  # OpenMP spin-waiting on a busy 2-core box is 10-20x slower than 1 thread
        model = HistGradientBoostingClassifier(random_state=0, max_iter=100).fit(x_train, y_train)
    accuracy = model.score(x_test, y_test)
    majority = max(y_test.mean(), 1 - y_test.mean())
    assert 0.78 <= accuracy <= 0.88
    assert accuracy > majority + 0.07  # much better than always answering "stays"


def test_a_million_rows_in_seconds() -> None:
    started = time.perf_counter()
    frame = generate_churn_dataset(1_000_000, seed=4)
    elapsed = time.perf_counter() - started
    assert len(frame) == 1_000_000
    assert elapsed < 15, f"generating 1M rows took {elapsed:.1f}s"
