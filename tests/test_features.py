"""The model's own feature steps (mlpipeline.features) compute exactly what the scikit-learn/pandas steps they
replace computed: the same matrix, so a model's quality does not depend on which of the two built it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from mlpipeline.features import (
    DATE_PARTS,
    CategoryOneHot,
    DateParts,
    MedianImputer,
    add_date_parts,
    date_part_columns,
)


def _text_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = np.array(["b", "a", "Zeta", "c c", "é", "10"], dtype=object)
    frame = pd.DataFrame({name: values[rng.integers(0, len(values), rows)] for name in ("x", "y", "z")})
    frame = frame.mask(rng.random(frame.shape) < 0.1)  # NaN holes
    frame.loc[frame.index[:4], "x"] = None  # as Parquet gives missing text
    frame["y"] = frame["y"].where(frame["y"] != "a", "c c")  # a tie-free column and ...
    frame.loc[frame.index[:2], "z"] = ["b", "a"]
    return frame


def _sklearn_reference(frame: pd.DataFrame) -> object:
    return make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    ).fit(frame.where(frame.notna(), np.nan))  # sklearn's imputer knows NaN, not None, as missing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_category_one_hot_is_the_most_frequent_imputer_and_one_hot_encoder(seed: int) -> None:
    train = _text_frame(3_000, seed)
    reference = _sklearn_reference(train)
    ours = CategoryOneHot()
    fitted_matrix = ours.fit_transform(train)
    assert fitted_matrix.dtype == np.float64
    assert np.array_equal(fitted_matrix, reference.transform(train.where(train.notna(), np.nan)))
    assert np.array_equal(ours.transform(train), fitted_matrix), "fit_transform is fit then transform"
    assert [list(c) for c in ours.categories_] == [list(c) for c in reference[-1].categories_]
    assert list(ours.get_feature_names_out()) == list(reference[-1].get_feature_names_out(list(train.columns)))

    unseen = _text_frame(200, seed + 10)
    unseen.iloc[::7, 1] = "never seen"
    unseen.iloc[3, 0] = pd.NA
    assert np.array_equal(ours.transform(unseen), reference.transform(unseen.where(unseen.notna(), np.nan)))
    assert np.array_equal(ours.transform(unseen.to_numpy()), ours.transform(unseen)), "arrays as frames"


def test_category_one_hot_breaks_ties_and_empty_columns_like_sklearn() -> None:
    tied = pd.DataFrame({"x": ["b", "a", "b", "a", None, "c"]})
    ours = CategoryOneHot().fit(tied)
    assert ours.categories_[0][ours.fill_codes_[0]] == "a", "the first of the most frequent in sorted order"
    assert np.array_equal(ours.transform(pd.DataFrame({"x": [None]})), [[1.0, 0.0, 0.0]])
    empty = CategoryOneHot().fit(pd.DataFrame({"x": ["a", "b"], "nothing": [None, np.nan]}))
    assert empty.transform(pd.DataFrame({"x": ["b"], "nothing": [None]})).tolist() == [[0.0, 1.0]]


def _pandas_parts(frame: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    """What DateParts computed through pandas' ``.dt`` accessors before it was vectorised."""
    values = pd.to_datetime(frame[column], errors="coerce")
    return {f"{column}_{part}": getattr(values.dt, part).astype("float64").to_numpy() for part in DATE_PARTS}


@pytest.mark.parametrize("unit", ["ns", "us", "ms", "s"])
def test_date_parts_are_pandas_calendar_parts_for_every_unit(unit: str) -> None:
    rng = np.random.default_rng(3)
    # Before and after 1970 (floor, not truncation, to the day), leap days, year ends, times of day.
    seconds = np.concatenate(
        [rng.integers(-4_000_000_000, 4_000_000_000, 5_000), [-1, 0, 86_399, 951_782_400, 951_868_799, 1_704_067_199]]
    )
    when = pd.Series(pd.to_datetime(seconds, unit="s")).astype(f"datetime64[{unit}]")
    when[::13] = pd.NaT
    frame = pd.DataFrame({"signup": when, "age": 1.0, "other": when})
    derived = DateParts(["signup", "other"]).fit(frame).transform(frame)
    assert list(derived.columns) == ["age", *date_part_columns("signup"), *date_part_columns("other")]
    for name, expected in {**_pandas_parts(frame, "signup"), **_pandas_parts(frame, "other")}.items():
        assert derived[name].dtype == np.float64
        assert np.array_equal(derived[name].to_numpy(), expected, equal_nan=True), name
    # Short inputs (a request's rows) take numpy's calendar conversions instead of the arithmetic: same parts.
    for start in range(0, len(frame), 97):
        chunk = frame.iloc[start : start + 3]
        short = DateParts(["signup"]).fit(chunk).transform(chunk)
        for name, expected in _pandas_parts(chunk, "signup").items():
            assert np.array_equal(short[name].to_numpy(), expected, equal_nan=True), name


def test_date_parts_of_text_and_zoned_times_are_pandas_ones() -> None:
    text = pd.DataFrame({"d": ["2024-02-29", "not a date", None, "1969-12-31"]})
    zoned = pd.DataFrame({"d": pd.date_range("2023-12-31 20:00", periods=50, freq="37min", tz="America/New_York")})
    for frame in (text, zoned):
        derived = add_date_parts(frame, ["d"])
        assert list(derived.columns) == ["d", *date_part_columns("d")]
        for name, expected in _pandas_parts(frame, "d").items():
            assert np.array_equal(derived[name].to_numpy(), expected, equal_nan=True), name


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")  # the reference's transform
def test_median_imputer_is_sklearns_median_imputer() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(2_001, 4)), columns=["a", "b", "c", "d"])
    frame = frame.mask(rng.random(frame.shape) < 0.2)  # odd and even counts of present values
    frame["c"] = np.nan  # no value at all: dropped, as SimpleImputer drops it
    frame["d"] = frame["d"].round()  # ties
    before = frame.copy()
    reference = SimpleImputer(strategy="median")
    with pytest.warns(UserWarning, match="Skipping features without any observed values"):
        expected = reference.fit_transform(frame)
    ours = MedianImputer()
    matrix = ours.fit_transform(frame)
    assert matrix.dtype == np.float64 and np.array_equal(matrix, expected)
    assert np.array_equal(ours.statistics_, reference.statistics_, equal_nan=True)
    assert list(ours.get_feature_names_out()) == list(reference.get_feature_names_out())
    holed = frame.head(50).mask(rng.random((50, 4)) < 0.5)
    assert np.array_equal(ours.transform(holed), reference.transform(holed))
    assert np.array_equal(ours.transform(holed.to_numpy()), ours.transform(holed))
    pd.testing.assert_frame_equal(frame, before)  # filled in a new matrix, never in the caller's frame
    with pytest.raises(ValueError, match="infinity"):
        ours.transform(frame.head(3).assign(a=np.inf))
