"""Data the ETL must not turn into a training set silently: non-finite numbers, mostly blank columns, duplicate
header names, a positive label that never occurs; and the quarantine's own bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.stages.etl import EtlError, etl
from tests.stages.etl.support import SCHEMA, good_rows, make_config, write_csv

HEADER = "id,amount,count,colour,active,seen,label"


def assert_no_output(tmp_path: Path, run: str = "r1") -> None:
    """No processed directory for the run and no half-built temp directory next to it."""
    processed = tmp_path / "data" / "processed"
    leftovers = sorted(p.name for p in processed.iterdir()) if processed.exists() else []
    assert leftovers == [], leftovers


def run(tmp_path: Path, rows: list[str], **overrides: object) -> object:
    return etl(make_config(tmp_path, **overrides), run="r1", raw_data_path=write_csv(tmp_path, rows), raw_format="csv")


# --- non-finite numbers ------------------------------------------------------------------------------------------


def test_non_finite_numbers_are_quarantined_with_a_reason(tmp_path: Path) -> None:
    rows = good_rows(40)
    rows[1] = "1,inf,2,red,true,2024-01-11,1"
    rows[2] = "2,-Infinity,2,red,true,2024-01-11,1"  # below the minimum too: the first failing check wins
    rows[3] = "3,5,inf,red,true,2024-01-11,1"  # an integer column
    rows[4] = "4,NAN,2,red,true,2024-01-11,1"  # not a spelling of "missing"
    rows[5] = "5,NaN,2,red,true,2024-01-11,1"  # pandas' missing token: missing, imputed
    result = run(tmp_path, rows)
    quarantine = pd.read_csv(result.quarantine_path, dtype=str)
    assert dict(zip(quarantine["id"], quarantine["_reason"], strict=True)) == {
        "1": "amount: not a finite number",
        "2": "amount: not a finite number",
        "3": "count: not a finite number",
        "4": "amount: not a number",
    }
    frame = pd.read_parquet(result.data_path)
    assert np.isfinite(frame["amount"]).all() and frame.loc[frame["id"] == "5", "amount"].notna().all()


def test_non_finite_floats_in_parquet_are_quarantined_too(tmp_path: Path) -> None:
    frame = pd.DataFrame([r.split(",") for r in good_rows(30)], columns=HEADER.split(","))
    frame["amount"] = frame["amount"].astype(float)
    frame.loc[3, "amount"] = np.inf
    frame.loc[4, "amount"] = np.nan  # a missing value in Parquet
    path = tmp_path / "raw.parquet"
    frame.to_parquet(path)
    result = etl(make_config(tmp_path), run="r1", raw_data_path=str(path), raw_format="parquet")
    quarantine = pd.read_csv(result.quarantine_path, dtype=str)
    assert quarantine[["id", "_reason"]].values.tolist() == [["3", "amount: not a finite number"]]
    assert result.rows_out == 29


# --- mostly blank columns ----------------------------------------------------------------------------------------


def test_a_column_missing_in_most_rows_is_refused(tmp_path: Path) -> None:
    rows = good_rows(40)
    for i in range(24):  # 60% of the rows: no amount
        rows[i] = rows[i].split(",", 2)[0] + ",," + rows[i].split(",", 2)[2]
    rows[30] = "30,5,2,purple,true,2024-01-11,1"  # quarantined: the share is of the 39 clean rows
    with pytest.raises(EtlError, match=r"max_missing_fraction=50.0% of the 39 clean rows: amount \(61.5%\)") as e:
        run(tmp_path, rows)
    assert "made-up values" in str(e.value)
    assert_no_output(tmp_path)
    result = run(tmp_path, rows, max_missing_fraction=0.7)  # a setting, when the gaps are expected
    assert "amount" in json.loads(Path(result.profile_path).read_text())["imputed_with"]


def test_a_column_blank_in_every_row_is_refused_with_the_default(tmp_path: Path) -> None:
    rows = [r.replace(",true,", ",,") for r in good_rows(30)]
    with pytest.raises(EtlError, match=r"active \(100.0%\)"):
        run(tmp_path, rows)
    assert_no_output(tmp_path)


# --- duplicate header names -------------------------------------------------------------------------------------


def test_duplicate_header_names_in_a_csv_are_named(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("id,amount,count,colour,amount,active,seen,label,count,extra,extra,,\n")
    with pytest.raises(EtlError, match=r"names these columns more than once: \['amount', 'count', 'extra'\]"):
        etl(make_config(tmp_path), run="r1", raw_data_path=str(path), raw_format="csv")
    assert_no_output(tmp_path)


def test_duplicate_column_names_in_parquet_are_named(tmp_path: Path) -> None:
    columns = [pa.array([str(v) for v in range(20)]) for _ in range(8)]
    path = tmp_path / "raw.parquet"
    names = ["id", "amount", "count", "colour", "active", "seen", "label", "label"]
    pq.write_table(pa.Table.from_arrays(columns, names=names), path)
    with pytest.raises(EtlError, match=r"names these columns more than once: \['label'\]"):
        etl(make_config(tmp_path), run="r1", raw_data_path=str(path), raw_format="parquet")
    assert_no_output(tmp_path)


# --- target classes ---------------------------------------------------------------------------------------------


def test_a_positive_label_that_never_occurs_is_refused(tmp_path: Path) -> None:
    rows = [r[: r.rindex(",")] + ("," + ("yes" if i % 2 else "no")) for i, r in enumerate(good_rows(30))]
    expected = r"positive_label '1' never occurs in target 'label' \(in 30 clean rows\); values seen: 'no', 'yes'"
    with pytest.raises(EtlError, match=expected):
        run(tmp_path, rows)
    assert_no_output(tmp_path)
    assert run(tmp_path, rows, dataset_schema={**SCHEMA, "positive_label": "yes"}).rows_out == 30


def test_numeric_labels_without_the_positive_one_are_shown_as_numbers(tmp_path: Path) -> None:
    rows = [r[: r.rindex(",")] + ("," + ("2" if i % 2 else "0")) for i, r in enumerate(good_rows(30))]
    with pytest.raises(EtlError, match=r"values seen: 0, 2\. Set dataset_schema.positive_label"):
        run(tmp_path, rows)
    assert_no_output(tmp_path)


def test_only_the_positive_class_is_refused(tmp_path: Path) -> None:
    rows = [r[: r.rindex(",")] + ",1" for r in good_rows(30)]
    with pytest.raises(EtlError, match=r"holds only the positive class '1' in all 30 clean rows"):
        run(tmp_path, rows)
    assert_no_output(tmp_path)


# --- the quarantine's bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [4, 1000])
def test_the_quarantine_file_holds_at_most_max_quarantine_rows(tmp_path: Path, chunk_rows: int) -> None:
    rows = good_rows(30) + [f"{100 + i},oops,1,red,true,2024-01-01,1" for i in range(12)]
    result = run(tmp_path, rows, max_quarantine_rows=5, max_bad_row_fraction=0.5, etl_chunk_rows=chunk_rows)
    quarantine = pd.read_csv(result.quarantine_path, dtype=str)
    assert quarantine["id"].tolist() == ["100", "101", "102", "103", "104"]  # the first five
    assert result.rows_quarantined == 12
    profile = json.loads(Path(result.profile_path).read_text())
    assert profile["quarantine_rows_not_written"] == 7
    assert profile["quarantine_reasons"] == {"amount: not a number": 12}


def test_a_rejected_run_keeps_only_the_capped_quarantine(tmp_path: Path) -> None:
    rows = good_rows(20) + [f"{100 + i},oops,1,red,true,2024-01-01,1" for i in range(10)]
    with pytest.raises(EtlError, match=r"10 of 30 rows .* the first 3 rows and reasons are in") as error:
        run(tmp_path, rows, max_quarantine_rows=3)
    kept = Path(str(error.value).rsplit(" ", 1)[-1])
    assert len(pd.read_csv(kept)) == 3
    assert [p.name for p in (tmp_path / "data" / "processed").iterdir()] == [kept.name]


def test_valid_data_has_no_quarantine_note_in_its_profile(tmp_path: Path) -> None:
    profile = json.loads(Path(run(tmp_path, good_rows(30)).profile_path).read_text())
    assert "quarantine_rows_not_written" not in profile
