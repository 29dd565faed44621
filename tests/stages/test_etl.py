from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlpipeline.config import build_config
from mlpipeline.stages.etl import EtlError, etl

SCHEMA = {
    "target": "label",
    "id_column": "id",
    "columns": [
        {"name": "amount", "type": "numeric", "min": 0, "max": 1000},
        {"name": "count", "type": "integer", "min": 0},
        {"name": "colour", "type": "categorical", "categories": ["red", "blue", "green"]},
        {"name": "active", "type": "boolean"},
        {"name": "seen", "type": "date"},
    ],
}

GOOD_ROW = "{i},{amount},{count},{colour},true,2024-0{month}-1{day},{label}"


def _csv(tmp_path: Path, rows: list[str]) -> str:
    path = tmp_path / "raw.csv"
    path.write_text("id,amount,count,colour,active,seen,label\n" + "\n".join(rows) + "\n")
    return str(path)


def _good_rows(n: int) -> list[str]:
    colours = ["red", "blue", "green"]
    return [
        GOOD_ROW.format(i=i, amount=10 + i, count=i % 7, colour=colours[i % 3], month=1 + i % 9, day=i % 9, label=i % 2)
        for i in range(n)
    ]


def _config(tmp_path: Path, **overrides):
    return build_config({"data_dir": str(tmp_path / "data"), "dataset_schema": SCHEMA, "min_rows": 10, **overrides})


def test_clean_data_becomes_typed_parquet_with_features_and_profile(tmp_path: Path) -> None:
    rows = _good_rows(40)
    rows[3] = "3,,2,red,,2024-01-13,1"  # missing amount and active: imputed, not quarantined
    result = etl(_config(tmp_path), run="r1", raw_data_path=_csv(tmp_path, rows), raw_format="csv")
    frame = pd.read_parquet(result.data_path)
    assert result.rows_in == 40 and result.rows_out == 40 and result.rows_quarantined == 0
    assert frame["amount"].dtype == "float64" and frame["amount"].notna().all()
    assert frame["count"].dtype == "int64"
    assert frame["active"].dtype == "bool"
    assert str(frame["seen"].dtype).startswith("datetime64")
    assert {"seen_year", "seen_month", "seen_dayofweek", "seen_dayofyear"} <= set(frame.columns)
    assert frame.loc[frame["id"] == "3", "amount"].item() == pytest.approx(frame["amount"].median(), rel=0.2)
    profile = pd.read_json(result.profile_path, typ="series")
    assert profile["rows"] == 40
    assert "amount" in profile["imputed_with"]
    assert Path(result.processed_dir).name == "r1"


def test_bad_rows_are_quarantined_with_a_reason_each(tmp_path: Path) -> None:
    rows = _good_rows(40)
    rows[1] = "1,abc,2,red,true,2024-01-11,1"
    rows[2] = "2,-5,2,red,true,2024-01-11,1"
    rows[4] = "4,5,2.5,red,true,2024-01-11,1"
    rows[5] = "5,5,2,purple,true,2024-01-11,1"
    rows[6] = "6,5,2,red,maybe,2024-01-11,1"
    rows[7] = "7,5,2,red,true,not-a-date,1"
    rows[8] = "8,5,2,red,true,2024-01-11,"
    rows.append(rows[0])  # an exact duplicate
    result = etl(_config(tmp_path), run="r1", raw_data_path=_csv(tmp_path, rows), raw_format="csv")
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


def test_too_many_bad_rows_fail_with_a_clear_message_and_keep_the_evidence(tmp_path: Path) -> None:
    rows = _good_rows(20) + ["99,oops,1,red,true,2024-01-01,1"] * 10
    with pytest.raises(EtlError, match=r"10 of 30 rows \(33.3%\) failed validation.*max_bad_row_fraction=20.0%") as e:
        etl(_config(tmp_path), run="r1", raw_data_path=_csv(tmp_path, rows), raw_format="csv")
    kept = Path(str(e.value).rsplit(" ", 1)[-1])
    assert kept.exists() and len(pd.read_csv(kept)) == 10
    assert not (tmp_path / "data" / "processed" / "r1").exists(), "no half-written output"


def test_missing_target_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("id,amount,count,colour,active,seen\n1,2,3,red,true,2024-01-01\n")
    with pytest.raises(EtlError, match=r"missing required column\(s\) \['label'\]"):
        etl(_config(tmp_path), run="r1", raw_data_path=str(path), raw_format="csv")


def test_rerun_for_the_same_run_returns_the_same_output(tmp_path: Path) -> None:
    source = _csv(tmp_path, _good_rows(30))
    first = etl(_config(tmp_path), run="r1", raw_data_path=source, raw_format="csv")
    before = Path(first.data_path).read_bytes()
    second = etl(_config(tmp_path), run="r1", raw_data_path=source, raw_format="csv")
    assert second == first
    assert Path(first.data_path).read_bytes() == before
    assert not [p for p in (tmp_path / "data" / "processed").iterdir() if p.name.startswith(".")]


def test_multiclass_target_is_refused(tmp_path: Path) -> None:
    rows = [r[:-1] + str(i % 3) for i, r in enumerate(_good_rows(30))]
    with pytest.raises(EtlError, match="only binary classification"):
        etl(_config(tmp_path), run="r1", raw_data_path=_csv(tmp_path, rows), raw_format="csv")


def test_too_few_rows(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match="fewer than min_rows=10"):
        etl(_config(tmp_path), run="r1", raw_data_path=_csv(tmp_path, _good_rows(5)), raw_format="csv")


def _run(tmp_path: Path, source: str, run: str, chunk_rows: int):
    config = _config(tmp_path, etl_chunk_rows=chunk_rows, max_bad_row_fraction=0.5)
    return etl(config, run=run, raw_data_path=source, raw_format="csv")


def test_small_chunks_give_the_same_result_as_one_chunk(tmp_path: Path) -> None:
    rows = _good_rows(60)
    rows[3] = "3,,2,red,,2024-01-13,1"  # imputed
    rows[7] = " 7 , 17 ,0, blue ,YES,2024-08-17,1.0"  # padded values; "1.0" is the label 1
    rows[9] = "9,abc,2,red,true,2024-01-11,1"  # quarantined
    rows[20] = "20,5,2,purple,true,2024-01-11,0"  # quarantined
    rows[31] = "31,5,2,red,true,2023-02-29,0"  # not a date: quarantined
    rows += [rows[0], rows[25], rows[59]]  # duplicates
    source = _csv(tmp_path, rows)
    whole = _run(tmp_path, source, "whole", chunk_rows=1_000_000)
    chunked = _run(tmp_path, source, "chunked", chunk_rows=4)
    pd.testing.assert_frame_equal(
        pd.read_parquet(whole.data_path), pd.read_parquet(chunked.data_path), check_exact=True
    )
    assert Path(whole.quarantine_path).read_text() == Path(chunked.quarantine_path).read_text()
    assert Path(whole.profile_path).read_text() == Path(chunked.profile_path).read_text()
    assert whole.data_sha256 == chunked.data_sha256
    assert (whole.rows_out, whole.rows_quarantined, whole.duplicates_dropped) == (57, 3, 3)
    assert (chunked.rows_out, chunked.rows_quarantined, chunked.duplicates_dropped) == (57, 3, 3)
    quarantine = pd.read_csv(chunked.quarantine_path)
    assert quarantine["_row_number"].tolist() == [10, 21, 32]


def test_duplicates_in_different_chunks_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    rows = _good_rows(30)
    rows[29] = rows[2]  # chunk 1 (rows 0-4) and chunk 6 (rows 25-29) with chunks of 5
    rows[14] = rows[13]  # neighbours across the boundary... of the same chunk
    rows[15] = rows[13]  # ...and of the next chunk
    result = _run(tmp_path, _csv(tmp_path, rows), "r1", chunk_rows=5)
    frame = pd.read_parquet(result.data_path)
    assert result.duplicates_dropped == 3 and result.rows_out == 27
    assert frame["id"].tolist() == [str(i) for i in range(30) if i not in (14, 15, 29)]


def test_imputation_uses_the_median_of_all_rows_not_of_a_chunk(tmp_path: Path) -> None:
    amounts = [1, 2, 3, 4, 5, 100, 200, 300, 400, None, 500, 600]  # first chunk median 3, global median 100
    rows = [
        GOOD_ROW.format(i=i, amount="" if a is None else a, count=1, colour="red", month=1, day=1, label=i % 2)
        for i, a in enumerate(amounts)
    ]
    result = _run(tmp_path, _csv(tmp_path, rows), "r1", chunk_rows=5)
    frame = pd.read_parquet(result.data_path)
    assert frame.loc[frame["id"] == "9", "amount"].item() == 100.0
    assert pd.read_json(result.profile_path, typ="series")["imputed_with"] == {"amount": 100.0}


def test_python_whitespace_list_is_complete() -> None:
    import sys

    from mlpipeline.stages.etl import PYTHON_WHITESPACE

    assert "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) == PYTHON_WHITESPACE
