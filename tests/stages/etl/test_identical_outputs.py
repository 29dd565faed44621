"""The ETL's outputs are exactly the golden ones (``golden_cases.py``), whatever the chunk size and the number of
threads: the processed Parquet as an Arrow table (schema, pandas dtypes and every value), the quarantine file's
bytes, the profile and the result record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.stages.etl import FEATURES_FILE, PROFILE_FILE, QUARANTINE_FILE
from tests.stages.etl.golden_cases import CASES, GOLDEN_DIR, RECORD, Case, record_of

SETTINGS = (
    {"etl_chunk_rows": 1_000_000, "etl_threads": 3},  # also the fills and the profile column by column in parallel
    {"etl_chunk_rows": 64, "etl_threads": 1},
    {"etl_chunk_rows": 7, "etl_threads": 0},
)


def _pandas_columns(schema: pa.Schema) -> Any:
    """The column part of the pandas metadata (the dtypes ``read_parquet`` restores), without library versions."""
    return json.loads((schema.metadata or {}).get(b"pandas", b"{}")).get("columns")


def _assert_same_table(produced: Path, golden: Path) -> None:
    table, expected = pq.read_table(produced), pq.read_table(golden)
    assert table.schema.remove_metadata() == expected.schema.remove_metadata()
    assert _pandas_columns(table.schema) == _pandas_columns(expected.schema)
    for name in expected.column_names:
        assert table.column(name).equals(expected.column(name)), f"column {name!r} differs"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_outputs_are_the_golden_ones_whatever_the_chunks_and_threads(case: Case, tmp_path: Path) -> None:
    golden = GOLDEN_DIR / case.name
    hashes = set()
    for number, settings in enumerate(SETTINGS):
        result = case.run(tmp_path / "data", f"run-{number}", **settings)
        _assert_same_table(Path(result.data_path), golden / FEATURES_FILE)
        assert Path(result.quarantine_path).read_bytes() == (golden / QUARANTINE_FILE).read_bytes()
        assert json.loads(Path(result.profile_path).read_text()) == json.loads((golden / PROFILE_FILE).read_text())
        assert json.loads(json.dumps(record_of(result), default=str)) == json.loads((golden / RECORD).read_text())
        hashes.add(result.data_sha256)
    assert len(hashes) == 1, "the output's bytes depend on the chunk size or the threads"
