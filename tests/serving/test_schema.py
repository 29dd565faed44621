"""Request validation: the input schema turns JSON rows into typed columns, or names the bad row and column."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlpipeline.serving.schema import InputColumn, InputError, InputSchema

SCHEMA = InputSchema(
    (
        InputColumn("n", "long"),
        InputColumn("x", "double", required=False),
        InputColumn("c", "string"),
        InputColumn("b", "boolean"),
        InputColumn("d", "datetime"),
    )
)


def test_schema_builds_typed_frame_with_nulls_and_optional_columns() -> None:
    frame = SCHEMA.frame(
        [
            {"n": 3, "x": 1.5, "c": "a", "b": True, "d": "2024-03-01"},
            {"n": None, "c": None, "b": None, "d": "2024-03-01T12:00:00Z"},  # optional x absent
            {"n": "7", "x": "2.5", "c": 12, "b": "false", "d": None},
            {"n": True, "x": False, "c": "b", "b": 1.0, "d": pd.NaT},  # booleans as numbers and vice versa
        ]
    )
    assert list(frame.columns) == ["n", "x", "c", "b", "d"]
    assert frame["n"].dtype == np.float64 and np.isnan(frame["n"][1]) and frame["n"][2] == 7
    assert np.isnan(frame["x"][1]) and frame["x"][2] == 2.5
    assert frame["c"].tolist()[0] == "a" and frame["c"][2] == "12" and pd.isna(frame["c"][1])
    assert frame["b"].dtype == np.float64 and frame["b"].tolist()[0] == 1.0 and frame["b"][2] == 0.0
    assert frame["n"][3] == 1 and frame["x"][3] == 0.0 and frame["b"][3] == 1.0 and pd.isna(frame["d"][3])
    assert frame["d"].dtype == "datetime64[ns]"
    assert frame["d"][1] == pd.Timestamp("2024-03-01 12:00:00") and pd.isna(frame["d"][2])
    clean = SCHEMA.frame([{"n": 1, "x": 0.5, "c": "a", "b": False, "d": "2024-01-01"}])
    assert clean["n"].dtype == np.int64 and clean["b"].dtype == bool


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"n": 3.5, "x": 1, "c": "a", "b": True, "d": "2024-01-01"}, "row 0, column 'n': expected an integer"),
        ({"n": 1, "x": "abc", "c": "a", "b": True, "d": "2024-01-01"}, "row 0, column 'x': expected a number"),
        ({"n": 1, "x": float("inf"), "c": "a", "b": True, "d": "2024-01-01"}, "expected a finite number"),
        ({"n": 10**400, "x": 1, "c": "a", "b": True, "d": "2024-01-01"}, "row 0, column 'n': number"),
        ({"n": 1, "x": 1, "c": ["a"], "b": True, "d": "2024-01-01"}, "row 0, column 'c': expected a string"),
        ({"n": 1, "x": 1, "c": "a", "b": "maybe", "d": "2024-01-01"}, "row 0, column 'b': expected a boolean"),
        ({"n": 1, "x": 1, "c": "a", "b": True, "d": "yesterday"}, "row 0, column 'd': expected an ISO 8601"),
        ({"n": 1, "x": 1, "c": "a", "b": True}, "row 0: missing column(s) ['d']"),
        ({"n": 1, "x": 1, "c": "a", "b": True, "d": "2024-01-01", "z": 1}, "row 0: unknown column(s) ['z']"),
    ],
)
def test_schema_rejects_bad_rows_naming_row_and_column(row: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        SCHEMA.frame([row])
    assert fragment in str(caught.value)
