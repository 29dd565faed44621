"""Text to numbers as pandas reads it, without its crash on exponents beyond a C int."""

from __future__ import annotations

import math

import pandas as pd

from mlpipeline.numbers import to_float_array, to_numeric


def test_absurd_exponents_overflow_like_real_ones_instead_of_crashing() -> None:
    values = to_numeric(["1e277716837487", "1e-277716837487", "1e4294967296", "-1e2000000", "1E+0000012"])
    assert math.isnan(values[0]) and values[1] == 0.0 and math.isnan(values[2]) and math.isnan(values[3])
    assert values[4] == 1e12  # leading zeros do not make an exponent long


def test_everything_else_reads_as_pandas_reads_it() -> None:
    mixed = ["2.5", " 7 ", "1e3", "x", None, 3, 1e5, float("nan"), "", "0x10", "1_000"]
    expected = pd.to_numeric(pd.Series(mixed, dtype=object), errors="coerce").astype("float64")
    pd.testing.assert_series_equal(to_numeric(mixed), expected)
    strings = pd.Series(["1", "2e3", None], dtype="string")
    assert to_float_array(strings).tolist()[:2] == [1.0, 2000.0] and math.isnan(to_float_array(strings)[2])


def test_columns_without_text_read_as_they_are() -> None:
    assert to_numeric([None, None]).isna().all()
    assert to_numeric(pd.Series([1.5, float("nan")])).tolist()[0] == 1.5
    assert to_numeric(pd.Series([True, False])).tolist() == [1.0, 0.0]
    assert to_numeric([]).empty
    mixed = pd.Series([1, "1e277716837487", 2.0], dtype=object)
    assert to_numeric(mixed).tolist()[::2] == [1.0, 2.0] and math.isnan(to_numeric(mixed)[1])
