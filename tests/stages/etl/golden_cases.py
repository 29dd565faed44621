"""The ETL's golden cases: raw snapshots in every supported format and for every task, dirty on purpose, whose
outputs (``features.parquet``, ``quarantine.csv``, ``profile.json`` and the result record) are stored under
``golden/`` and must not change when the ETL's engine does (``test_identical_outputs.py``).

Regenerate the goldens (only when an output change is intended, and say why in the commit) with
``PYTHONPATH=src python -m tests.stages.etl.golden_cases [CASE ...]``; the raw snapshots are stored too, so the
goldens do not depend on the data generators staying the same.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.stages.etl import FEATURES_FILE, PROFILE_FILE, QUARANTINE_FILE, EtlResult, etl

GOLDEN_DIR = Path(__file__).parent / "golden"
RECORD = "record.json"
# Record fields that depend on where and when the ETL ran, or on the Parquet writer's bytes (the table itself is
# compared value by value).
UNCOMPARED_FIELDS = ("processed_dir", "data_path", "quarantine_path", "profile_path", "seconds", "data_sha256")

SMALL_SCHEMA: dict[str, Any] = {
    "target": "label",
    "id_column": "id",
    "columns": [
        {"name": "amount", "type": "numeric", "min": 0, "max": 1000},
        {"name": "count", "type": "integer", "min": 0, "nullable": False},
        {"name": "colour", "type": "categorical", "categories": ["red", "blue", "green"]},
        {"name": "active", "type": "boolean"},
        {"name": "seen", "type": "date"},
        {"name": "note", "type": "categorical"},
        {"name": "extra", "type": "numeric", "required": False},
    ],
}
_ABSENT_DATE = {"name": "visit", "type": "date", "required": False}  # a declared optional column the source lacks
_HEADER = "id,amount,count,colour,active,seen,note,label"
_COLOURS = ("red", "blue", "green")
_NOTES = ("a", "b", "c", "d")
_BOOLEANS = ("true", "false", "YES", "no", "1", "0", "T", "f", "")
_DATES = ("2024-01-15", "2023-12-31T23:30:00+02:00", "2024-02-29 10:00", "2024-03-01", "2022-07-04T08:00:00Z", "")
# One row per way a row is bad or odd; each replaces a clean row of the same index.
_ODD_ROWS = {
    3: "3,abc,1,red,true,2024-01-01,a,{label}",  # not a number
    5: "5,inf,1,red,true,2024-01-01,a,{label}",  # not a finite number
    6: "6,NaN,1,red,true,2024-01-01,a,{label}",  # NaN is missing, imputed
    7: "7,12,1.5,red,true,2024-01-01,a,{label}",  # not an integer
    8: "8,-1,1,red,true,2024-01-01,a,{label}",  # below minimum
    9: "9,1000.5,1,red,true,2024-01-01,a,{label}",  # above maximum
    10: "10,5,1,purple,true,2024-01-01,a,{label}",  # unknown category
    11: "11,5,1,red,maybe,2024-01-01,a,{label}",  # not a boolean
    12: "12,5,1,red,true,2023-02-29,a,{label}",  # not an ISO date
    13: "13,5,,red,true,2024-01-01,a,{label}",  # missing value (count is not nullable)
    14: "14,5,1,red,true,2024-01-01,a,",  # missing target
    15: "15,5,1,red,true,2024-01-01," + "x" * 60 + ",{label}",  # longer than max_cell_chars
    16: "16,?,?,red,?,?,?,{label}",  # '?' is missing: count is not nullable
    17: "17, 7.25 ,\u00a02\u3000, blue ,\tTRUE ,  2024-05-06  , b ,{label}",  # Python whitespace, case
    18: "18,1e2,3,green,N,2024-06-30T12:00:00-05:00,c,{label}",  # exponent; zoned date
    19: "19,-0.0,0,red,y,2024-06-30,NULL,{label}",  # -0.0; NULL token
    20: "20,1.0000000000000002,4,red,t,2024-06-30,None,{label}",  # past the fast number path
    21: '21,"5",1,"red",true,"2024-01-01","a,b",{label}',  # quoted cells, a comma inside
    22: "22,0x10,1,red,true,2024-01-01,a,{label}",  # hex is not a number
    23: "23,5,1,red,true,20240101,a,{label}",  # compact ISO date
}


@dataclass(frozen=True, eq=False)
class Case:
    """One raw snapshot (its format, and how it was made), and the settings it runs with."""

    name: str
    fmt: str
    make_raw: Callable[[], bytes]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def raw_name(self) -> str:
        return f"raw.{self.fmt}"

    def config(self, data_dir: Path, **overrides: Any) -> PipelineConfig:
        return build_config({"data_dir": str(data_dir), "min_rows": 10, **self.settings, **overrides})

    def run(self, data_dir: Path, run: str, **overrides: Any) -> EtlResult:
        source = GOLDEN_DIR / self.name / self.raw_name
        return etl(self.config(data_dir, **overrides), run=run, raw_data_path=str(source), raw_format=self.fmt)


def _small_rows(n: int, label: Callable[[int], str]) -> list[str]:
    rows = [
        f"{i},{(i * 37) % 1000 / 4},{i % 9},{_COLOURS[i % 3]},{_BOOLEANS[i % len(_BOOLEANS)]},"
        f"{_DATES[i % len(_DATES)]},{_NOTES[(i * 7) % 4]},{label(i)}"
        for i in range(n)
    ]
    for index, row in _ODD_ROWS.items():
        rows[index] = row.format(label=label(index))
    rows[30] = rows[31] = rows[40]  # duplicates of a later row: the first copy is kept
    rows[50] = rows[50].replace(",", " ,", 2)  # the same row as another once stripped
    rows[51] = rows[50].replace(" ,", ",")
    return rows


def _small_csv(label: Callable[[int], str]) -> Callable[[], bytes]:
    return lambda: ("\n".join([_HEADER, *_small_rows(120, label)]) + "\n").encode()


def _churn(fmt: str, rows: int, seed: int, **dirt: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        from mlpipeline.dev.churn_data import generate_churn_dataset
        from mlpipeline.dev.formats import serialize

        return serialize(generate_churn_dataset(rows, seed, **dirt), fmt)

    return make


_DIRTY = {"missing_rate": 0.05, "malformed_rate": 0.03, "duplicate_rate": 0.05}
_SMALL = {"dataset_schema": SMALL_SCHEMA, "max_cell_chars": 40, "max_bad_row_fraction": 0.5}
CASES: list[Case] = [
    Case("churn_csv", "csv", _churn("csv", 1500, 11, **_DIRTY), {"task": "binary"}),
    Case("churn_jsonl", "jsonl", _churn("jsonl", 400, 12, **_DIRTY)),
    Case("churn_parquet", "parquet", _churn("parquet", 400, 13, **_DIRTY)),
    Case("small_binary", "csv", _small_csv(lambda i: ("yes", "no", "No")[i % 3]), _SMALL),
    Case("small_capped_quarantine", "csv", _small_csv(lambda i: str(i % 2)), {**_SMALL, "max_quarantine_rows": 4}),
    Case("small_multiclass_text", "csv", _small_csv(lambda i: "xyz"[i % 3]), {**_SMALL, "task": "multiclass"}),
    Case("small_multiclass_numbers", "csv", _small_csv(lambda i: ("1", "2.0", "3", "2")[i % 4]), _SMALL),
    Case(
        "small_regression",
        "csv",
        _small_csv(lambda i: "abc" if i == 60 else "inf" if i == 61 else f"{(i * 13) % 97 / 3:.4f}"),
        {**_SMALL, "task": "regression"},
    ),
    Case("small_regression_auto", "csv", _small_csv(lambda i: f" {(i * 13) % 97 / 3:.4f}"), _SMALL),
    Case(
        "small_absent_optional_date",
        "csv",
        _small_csv(lambda i: str(i % 2)),
        {**_SMALL, "dataset_schema": {**SMALL_SCHEMA, "columns": [*SMALL_SCHEMA["columns"], _ABSENT_DATE]}},
    ),
    Case(
        "small_inferred",
        "csv",
        _small_csv(lambda i: "ab"[i % 2]),
        {"dataset_schema": {"target": "label", "id_column": "id"}, "max_bad_row_fraction": 0.5},
    ),
]


def record_of(result: EtlResult) -> dict[str, Any]:
    """The result without the fields that depend on where, when and by which writer the ETL ran."""
    return {k: v for k, v in result.to_dict().items() if k not in UNCOMPARED_FIELDS}


def write_goldens(names: list[str]) -> None:
    for case in CASES:
        if names and case.name not in names:
            continue
        folder = GOLDEN_DIR / case.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / case.raw_name).write_bytes(case.make_raw())
        with tempfile.TemporaryDirectory() as scratch:
            result = case.run(Path(scratch), "golden")
            shutil.copy(result.data_path, folder / FEATURES_FILE)
            shutil.copy(result.quarantine_path, folder / QUARANTINE_FILE)
            shutil.copy(result.profile_path, folder / PROFILE_FILE)
            (folder / RECORD).write_text(json.dumps(record_of(result), indent=2, default=str) + "\n")
        print(case.name, pq.read_metadata(folder / FEATURES_FILE).num_rows, "rows", file=sys.stderr)


if __name__ == "__main__":
    write_goldens(sys.argv[1:])  # the cases named, or all
