"""The ETL stage end to end: typed output, profile, refusals, reruns, and byte-identical output across chunk sizes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlpipeline.stages.etl import EtlError, etl
from tests.stages.etl.support import good_rows, make_config, run_etl, write_csv


def test_clean_data_becomes_typed_parquet_with_features_and_profile(tmp_path: Path) -> None:
    rows = good_rows(40)
    rows[3] = "3,,2,red,,2024-01-13,1"  # missing amount and active: imputed, not quarantined
    result = etl(make_config(tmp_path), run="r1", raw_data_path=write_csv(tmp_path, rows), raw_format="csv")
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


def test_too_many_bad_rows_fail_with_a_clear_message_and_keep_the_evidence(tmp_path: Path) -> None:
    rows = good_rows(20) + ["99,oops,1,red,true,2024-01-01,1"] * 10
    with pytest.raises(EtlError, match=r"10 of 30 rows \(33.3%\) failed validation.*max_bad_row_fraction=20.0%") as e:
        etl(make_config(tmp_path), run="r1", raw_data_path=write_csv(tmp_path, rows), raw_format="csv")
    kept = Path(str(e.value).rsplit(" ", 1)[-1])
    assert kept.exists() and len(pd.read_csv(kept)) == 10
    assert not (tmp_path / "data" / "processed" / "r1").exists(), "no half-written output"


def test_missing_target_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("id,amount,count,colour,active,seen\n1,2,3,red,true,2024-01-01\n")
    with pytest.raises(EtlError, match=r"missing required column\(s\) \['label'\]"):
        etl(make_config(tmp_path), run="r1", raw_data_path=str(path), raw_format="csv")


def test_rerun_for_the_same_run_returns_the_same_output(tmp_path: Path) -> None:
    source = write_csv(tmp_path, good_rows(30))
    first = etl(make_config(tmp_path), run="r1", raw_data_path=source, raw_format="csv")
    before = Path(first.data_path).read_bytes()
    second = etl(make_config(tmp_path), run="r1", raw_data_path=source, raw_format="csv")
    assert second == first
    assert Path(first.data_path).read_bytes() == before
    assert not [p for p in (tmp_path / "data" / "processed").iterdir() if p.name.startswith(".")]


def test_too_few_rows(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match="fewer than min_rows=10"):
        etl(make_config(tmp_path), run="r1", raw_data_path=write_csv(tmp_path, good_rows(5)), raw_format="csv")


def test_small_chunks_give_the_same_result_as_one_chunk(tmp_path: Path) -> None:
    rows = good_rows(60)
    rows[3] = "3,,2,red,,2024-01-13,1"  # imputed
    rows[7] = " 7 , 17 ,0, blue ,YES,2024-08-17,1.0"  # padded values; "1.0" is the label 1
    rows[9] = "9,abc,2,red,true,2024-01-11,1"  # quarantined
    rows[20] = "20,5,2,purple,true,2024-01-11,0"  # quarantined
    rows[31] = "31,5,2,red,true,2023-02-29,0"  # not a date: quarantined
    rows += [rows[0], rows[25], rows[59]]  # duplicates
    source = write_csv(tmp_path, rows)
    whole = run_etl(tmp_path, source, "whole", chunk_rows=1_000_000)
    chunked = run_etl(tmp_path, source, "chunked", chunk_rows=4)
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


def test_an_absurd_exponent_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    """pandas 2.3's to_numeric segfaults on an exponent beyond a C int (1e277716837487) and wraps 1e4294967296
    round to 1.0: each is a number out of range here, quarantined with its reason, and the run goes on."""
    rows = good_rows(30)
    rows[4] = "4,1e277716837487,2,red,true,2024-01-14,1"
    rows[5] = "5,1e4294967296,2,red,true,2024-01-15,0"
    rows[6] = "6,1E+0000002,2,red,true,2024-01-16,1"  # leading zeros: 100, a good value
    result = etl(make_config(tmp_path), run="r1", raw_data_path=write_csv(tmp_path, rows), raw_format="csv")
    assert result.rows_quarantined == 2 and result.rows_out == 28
    quarantined = pd.read_csv(result.quarantine_path, dtype=str)
    assert sorted(quarantined["id"]) == ["4", "5"]
    frame = pd.read_parquet(result.data_path)
    assert frame.loc[frame["id"] == "6", "amount"].item() == 100.0
