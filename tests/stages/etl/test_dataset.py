"""Whole-dataset decisions: binary target, dedupe across chunks, imputation over all rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from mlpipeline.stages.etl import EtlError, etl
from mlpipeline.stages.etl.hashing import hash_rows
from tests.stages.etl.support import GOOD_ROW, good_rows, make_config, run_etl, write_csv


def test_three_classes_are_refused_when_the_task_is_binary(tmp_path: Path) -> None:
    rows = [r[:-1] + str(i % 3) for i, r in enumerate(good_rows(30))]
    expected = (
        r"target 'label' has 3 distinct values \(0, 1, 2\); task binary needs exactly two. Set task to multiclass"
    )
    with pytest.raises(EtlError, match=expected):
        etl(make_config(tmp_path, task="binary"), run="r1", raw_data_path=write_csv(tmp_path, rows), raw_format="csv")


def test_duplicates_in_different_chunks_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[29] = rows[2]  # chunk 1 (rows 0-4) and chunk 6 (rows 25-29) with chunks of 5
    rows[14] = rows[13]  # neighbours across the boundary... of the same chunk
    rows[15] = rows[13]  # ...and of the next chunk
    result = run_etl(tmp_path, write_csv(tmp_path, rows), "r1", chunk_rows=5)
    frame = pd.read_parquet(result.data_path)
    assert result.duplicates_dropped == 3 and result.rows_out == 27
    assert frame["id"].tolist() == [str(i) for i in range(30) if i not in (14, 15, 29)]


def test_imputation_uses_the_median_of_all_rows_not_of_a_chunk(tmp_path: Path) -> None:
    amounts = [1, 2, 3, 4, 5, 100, 200, 300, 400, None, 500, 600]  # first chunk median 3, global median 100
    rows = [
        GOOD_ROW.format(i=i, amount="" if a is None else a, count=1, colour="red", month=1, day=1, label=i % 2)
        for i, a in enumerate(amounts)
    ]
    result = run_etl(tmp_path, write_csv(tmp_path, rows), "r1", chunk_rows=5)
    frame = pd.read_parquet(result.data_path)
    assert frame.loc[frame["id"] == "9", "amount"].item() == 100.0
    assert pd.read_json(result.profile_path, typ="series")["imputed_with"] == {"amount": 100.0}


def test_equal_rows_hash_equally_whatever_else_is_in_their_chunk() -> None:
    long_text = "x" * 200
    columns = {
        "number": pa.array([0.0, -0.0, float("nan"), None, 1.5]),
        "text": pa.array(["a", "a", None, None, long_text]),
        "flag": pa.array([True, True, None, None, False]),
    }
    hashes = hash_rows(columns, 5)
    assert hashes[0] == hashes[1] and hashes[2] == hashes[3]  # -0.0 is 0.0; NaN is missing
    assert len(set(hashes[[0, 2, 4]].tolist())) == 3
    alone = hash_rows({name: values.slice(4) for name, values in columns.items()}, 1)
    assert alone[0] == hashes[4]
