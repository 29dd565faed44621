"""Reading raw snapshots as text columns, whatever the format."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlpipeline.dev.datasource import COLUMNS, DataSourceServer
from mlpipeline.stages.crawl import crawl, iter_raw, read_raw
from tests.stages.crawl.support import ROWS, make_config


def test_read_raw_gives_text_columns_and_the_same_values_in_every_format(
    tmp_path: Path, server: DataSourceServer
) -> None:
    server.malformed_rate = 0.1  # plenty of "abc" in numeric columns, unknown categories, bad dates
    frames = {}
    for fmt in ("csv", "jsonl", "parquet"):
        result = crawl(make_config(tmp_path, f"{server.url}/data.{fmt}"), f"run_{fmt}")
        frame = read_raw(result.data_path, result.format)
        assert list(frame.columns) == list(COLUMNS) and len(frame) == ROWS
        assert all(pd.api.types.is_object_dtype(dtype) for dtype in frame.dtypes)
        values = frame.to_numpy().ravel()
        assert all(isinstance(v, str) or (isinstance(v, float) and np.isnan(v)) for v in values)
        chunks = list(iter_raw(result.data_path, result.format, chunk_rows=400))
        assert [len(c) for c in chunks] == [400, 400, 400, 300]
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), frame)
        frames[fmt] = frame
    csv = frames["csv"]
    assert csv["contract"].isna().any()  # blanks are NaN
    for fmt in ("jsonl", "parquet"):
        other = frames[fmt]
        for column in COLUMNS:
            numbers_csv = pd.to_numeric(csv[column], errors="coerce")
            numbers_other = pd.to_numeric(other[column], errors="coerce")
            if numbers_csv.notna().any():  # numeric column: same numbers, and same non-numeric text
                np.testing.assert_allclose(numbers_csv, numbers_other, equal_nan=True)
                text = numbers_csv.isna() & csv[column].notna()
                assert csv.loc[text, column].equals(other.loc[text, column]), (fmt, column)
            else:
                assert csv[column].equals(other[column]), (fmt, column)


# --- reading snapshots ------------------------------------------------------------------------------------------


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return [None if isinstance(v, float) and np.isnan(v) else v for v in frame[name]]


def test_read_raw_jsonl_keeps_the_source_text(tmp_path: Path) -> None:
    uniform = _jsonl(
        tmp_path / "uniform.jsonl",
        [
            {"a": 1, "b": "2024-05-20", "c": True, "d": {"x": 1}, "e": 1.5, "t": "2024-05-20T10:00:00"},
            {"a": 2, "b": "2024-05-21", "c": None, "d": None, "e": None, "t": None},
        ],
    )
    # "a" mixes numbers and text: Arrow refuses, pandas reads it.
    mixed = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"a": 1, "b": "2024-05-20", "c": True, "d": {"x": 1}, "e": 1.5, "t": "2024-05-20T10:00:00"},
            {"a": "abc", "b": "2024-05-21", "c": None, "d": None, "e": None, "t": None},
        ],
    )
    for path, second_a in ((uniform, "2"), (mixed, "abc")):
        frame = read_raw(path, "jsonl")
        assert _column(frame, "a") == ["1", second_a]
        assert _column(frame, "b") == ["2024-05-20", "2024-05-21"]  # not turned into timestamps
        assert _column(frame, "t") == ["2024-05-20T10:00:00", None]
        assert _column(frame, "c") == ["true", None]
        assert _column(frame, "d") == ['{"x": 1}', None]
        assert _column(frame, "e") == ["1.5", None]
        pd.testing.assert_frame_equal(pd.concat(iter_raw(path, "jsonl", chunk_rows=1)), frame)


def test_iter_raw_jsonl_falls_back_mid_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlpipeline.stages.crawl.readers as readers_module

    # The type of "a" changes after many lines: the streaming fast path fails after delivering some chunks,
    # and the pandas path must continue exactly where it stopped.
    records = [{"i": i, "a": None if i < 2000 else f"x{i}"} for i in range(3000)]
    path = _jsonl(tmp_path / "late.jsonl", records)
    monkeypatch.setattr(readers_module, "_JSON_BLOCK", 4096)
    with caplog.at_level(logging.DEBUG, logger="mlpipeline.stages.crawl"):
        chunks = list(iter_raw(path, "jsonl", chunk_rows=500))
    assert "reading it with pandas" in caplog.text  # the fast path really gave up half-way
    frame = pd.concat(chunks)
    assert [len(c) for c in chunks][:2] == [500, 500]
    assert list(frame["i"]) == [str(i) for i in range(3000)]
    assert frame.index.equals(pd.RangeIndex(3000))
    assert _column(frame, "a") == [None] * 2000 + [f"x{i}" for i in range(2000, 3000)]
