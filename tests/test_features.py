"""The model's own feature steps (mlpipeline.features) compute exactly what the scikit-learn/pandas steps they
replace computed: the same matrix, so a model's quality does not depend on which of the two built it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipeline.features import (
    DATE_PARTS,
    CategoryOneHot,
    DateParts,
    FeatureMatrix,
    MedianImputer,
    add_date_parts,
    date_part_columns,
    exact_median,
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


def test_date_parts_of_a_long_column_of_nearby_dates_are_pandas_ones() -> None:
    """A column spanning fewer days than it has rows takes the per-day table: the same parts."""
    rng = np.random.default_rng(8)
    start = np.datetime64("1967-11-20T00:00:00", "s").astype(np.int64)  # across 1970 and the 2000 leap day
    seconds = start + rng.integers(0, 40 * 365 * 86_400, 30_000)
    when = pd.Series(seconds.astype("datetime64[s]")).astype("datetime64[ns]")
    when[::17] = pd.NaT
    frame = pd.DataFrame({"d": when})
    derived = add_date_parts(frame, ["d"])
    for name, expected in _pandas_parts(frame, "d").items():
        assert np.array_equal(derived[name].to_numpy(), expected, equal_nan=True), name
    assert add_date_parts(frame.assign(d=pd.NaT), ["d"])["d_year"].isna().all()


@pytest.mark.parametrize("seed", range(4))
def test_exact_median_is_numpys_median(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size in (1, 2, 3, 10, 1_001, 1_002):
        for values in (
            rng.integers(-3, 4, size).astype(np.float64),  # counted: small integers, negatives, ties
            rng.integers(1_990, 2_030, size).astype(np.float64),
            rng.normal(size=size),  # fractions: partitioned
            rng.integers(0, 2**40, size).astype(np.float64),  # integers too far apart to count
            np.round(rng.normal(size=size) * 4) / 2,
        ):
            assert exact_median(values) == np.median(values), values
    for size in (70_001, 70_002):  # long columns: the selection around a sample's middle
        for values in (rng.normal(size=size), rng.lognormal(0, 2, size), np.round(rng.normal(size=size), 1)):
            assert exact_median(values) == np.median(values)
        misleading = rng.normal(size=size)
        misleading[:: size // 4096] = 1e9  # every sampled value: the middle is not between its quantiles
        assert exact_median(misleading) == np.median(misleading)


def _mixed_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = _text_frame(rows, seed)
    frame["a"] = rng.normal(10, 3, rows)
    frame["b"] = rng.integers(0, 60, rows).astype(np.float64)
    frame["c"] = np.nan  # no value at all: dropped, as MedianImputer drops it
    frame["d"] = rng.integers(0, 2, rows).astype(np.float64)
    for column in ("a", "b"):
        frame[column] = frame[column].mask(rng.random(rows) < 0.1)
    return frame


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")  # the reference's transform
@pytest.mark.parametrize("scale", [False, True])
def test_feature_matrix_is_the_column_transformer_it_replaces(scale: bool) -> None:
    """The matrix of ColumnTransformer(MedianImputer [+ StandardScaler], CategoryOneHot), and of scikit-learn's
    own imputers, scaler and encoder: exactly without scaling, up to the rounding of the means and variances with;
    over several blocks of rows, with gaps, an all-missing column and unseen categories."""
    numeric, categorical = ["a", "b", "c", "d"], ["x", "y", "z"]
    train = _mixed_frame(40_000, 4)
    numeric_steps = [SimpleImputer(strategy="median")] + ([StandardScaler()] if scale else [])
    reference = ColumnTransformer(
        [
            ("numeric", make_pipeline(*numeric_steps), numeric),
            ("categorical", _sklearn_reference(train[categorical]), categorical),
        ]
    )
    expected = reference.fit_transform(train.where(train.notna(), np.nan))
    ours = FeatureMatrix(numeric=numeric, categorical=categorical, scale=scale)
    matrix = ours.fit_transform(train)
    assert matrix.dtype == np.float64 and matrix.flags.c_contiguous and matrix.shape == expected.shape
    if scale:
        assert np.allclose(matrix, expected, rtol=1e-12, atol=1e-12)
        assert np.allclose(ours.scale_, reference.named_transformers_["numeric"][-1].scale_, rtol=1e-12)
    else:
        assert np.array_equal(matrix, expected)
    assert np.array_equal(ours.transform(train), matrix), "fit_transform is fit then transform"
    unseen = _mixed_frame(300, 5)
    unseen.loc[unseen.index[::7], "y"] = "never seen"
    assert np.allclose(ours.transform(unseen), reference.transform(unseen.where(unseen.notna(), np.nan)), atol=1e-12)
    assert list(ours.get_feature_names_out()) == [
        "a", "b", "d", *CategoryOneHot().fit(train[categorical]).get_feature_names_out()
    ]  # fmt: skip
    with pytest.raises(ValueError, match="infinity"):
        ours.transform(unseen.assign(a=np.inf))
    with pytest.raises(TypeError, match="needs a DataFrame"):
        ours.transform(unseen.to_numpy())


@pytest.mark.parametrize("seed", [0, 1])
def test_category_one_hot_of_categoricals_is_that_of_the_same_text(seed: int) -> None:
    """Text read as pandas Categoricals (Parquet's dictionary-encoded columns): the same categories, fill codes and
    matrix as the same text as objects, whatever order the Categorical keeps its categories in (unused ones too)."""
    train = _text_frame(3_000, seed)
    typed = train.apply(lambda column: pd.Categorical(column, categories=["unused", *column.dropna().unique()]))
    as_text, as_categorical = CategoryOneHot(), CategoryOneHot()
    expected = as_text.fit_transform(train)
    assert np.array_equal(as_categorical.fit_transform(typed), expected)
    assert [list(c) for c in as_categorical.categories_] == [list(c) for c in as_text.categories_]
    assert np.array_equal(as_categorical.fill_codes_, as_text.fill_codes_)
    unseen = _text_frame(200, seed + 10)
    unseen.iloc[::7, 1] = "never seen"
    for model in (as_text, as_categorical):
        assert np.array_equal(model.transform(unseen.astype("category")), model.transform(unseen))


def test_feature_matrix_one_hot_of_many_categories_is_category_one_hots() -> None:
    """Too many combinations of categories for a table of them: the ones are written one by one, same matrix."""
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"id": rng.integers(0, 5_000, 20_000).astype(str).astype(object), "x": 1.0})
    frame.loc[frame.index[::11], "id"] = None
    ours = FeatureMatrix(numeric=["x"], categorical=["id"])
    expected = CategoryOneHot().fit_transform(frame[["id"]])
    assert np.array_equal(ours.fit_transform(frame), np.hstack([np.ones((len(frame), 1)), expected]))
    unseen = frame.head(100).assign(id="never seen")
    assert np.array_equal(ours.transform(unseen)[:, 1:], np.zeros((100, expected.shape[1])))
