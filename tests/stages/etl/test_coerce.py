"""Typing and validation: a quarantine reason per bad row, and the whitespace the ETL strips."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mlpipeline.stages.etl import etl
from tests.stages.etl.support import good_rows, make_config, write_csv


def test_bad_rows_are_quarantined_with_a_reason_each(tmp_path: Path) -> None:
    rows = good_rows(40)
    rows[1] = "1,abc,2,red,true,2024-01-11,1"
    rows[2] = "2,-5,2,red,true,2024-01-11,1"
    rows[4] = "4,5,2.5,red,true,2024-01-11,1"
    rows[5] = "5,5,2,purple,true,2024-01-11,1"
    rows[6] = "6,5,2,red,maybe,2024-01-11,1"
    rows[7] = "7,5,2,red,true,not-a-date,1"
    rows[8] = "8,5,2,red,true,2024-01-11,"
    rows.append(rows[0])  # an exact duplicate
    result = etl(make_config(tmp_path), run="r1", raw_data_path=write_csv(tmp_path, rows), raw_format="csv")
    quarantine = pd.read_csv(result.quarantine_path)
    reasons = dict(zip(quarantine["id"].astype(str), quarantine["_reason"], strict=True))
    assert reasons == {
        "1": "amount: not a number",
        "2": "amount: below minimum 0",
        "4": "count: not an integer",
        "5": "colour: unknown category",
        "6": "active: not a boolean",
        "7": "seen: not an ISO date",
        "8": "label: missing target",
    }
    assert result.rows_quarantined == 7
    assert result.duplicates_dropped == 1
    assert result.rows_out == 41 - 7 - 1


def test_python_whitespace_list_is_complete() -> None:
    import sys

    from mlpipeline.stages.etl import PYTHON_WHITESPACE

    assert "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) == PYTHON_WHITESPACE


def test_question_marks_are_missing_and_dates_may_mix_time_zones() -> None:
    import pyarrow as pa

    from mlpipeline.config import ColumnSpec
    from mlpipeline.stages.etl.coerce import coerce_column

    numbers = coerce_column(pa.array(["1.5", "?", "2"]), ColumnSpec(name="horsepower (hp)", type="numeric"))
    assert (numbers.codes == 0).all() and math.isnan(numbers.values.to_pylist()[1])  # missing, imputed later
    stamps = pa.array(["2020-01-01T10:00:00", "2020-01-01T12:00:00+02:00", "2020-01-01T10:00:00Z"])
    dates = coerce_column(stamps, ColumnSpec(name="at", type="date"))
    assert (dates.codes == 0).all()
    assert len({str(value) for value in dates.values.to_pylist()}) == 1  # all three are 10:00 UTC


def test_the_csv_reader_reads_every_missing_token_as_missing() -> None:
    """as_text skips the token check for the Arrow CSV reader's chunks: that reader must null every token."""
    from mlpipeline.stages.etl.coerce import MISSING_TOKENS
    from mlpipeline.stages.etl.reading import _PANDAS_NA_STRINGS

    assert set(MISSING_TOKENS.to_pylist()) <= set(_PANDAS_NA_STRINGS)


def test_as_text_skips_the_token_check_only_when_nothing_was_stripped() -> None:
    import pyarrow as pa

    from mlpipeline.stages.etl.coerce import as_text

    read_as_missing = pa.array(["a", None, "b"])  # a token read as missing by the reader
    assert as_text(read_as_missing, tokens_are_missing=True).to_pylist() == ["a", None, "b"]
    padded = pa.array([" NA ", "a", "\u3000?"])  # tokens once stripped: still missing
    assert as_text(padded, tokens_are_missing=True).to_pylist() == [None, "a", None]
    assert as_text(padded).to_pylist() == [None, "a", None]
