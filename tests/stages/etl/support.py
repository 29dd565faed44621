"""Small raw CSV snapshots and configurations shared by the ETL tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.stages.etl import EtlResult, etl

SCHEMA = {
    "target": "label",
    "positive_label": "1",
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


def write_csv(tmp_path: Path, rows: list[str]) -> str:
    path = tmp_path / "raw.csv"
    path.write_text("id,amount,count,colour,active,seen,label\n" + "\n".join(rows) + "\n")
    return str(path)


def good_rows(n: int) -> list[str]:
    colours = ["red", "blue", "green"]
    return [
        GOOD_ROW.format(i=i, amount=10 + i, count=i % 7, colour=colours[i % 3], month=1 + i % 9, day=i % 9, label=i % 2)
        for i in range(n)
    ]


def make_config(tmp_path: Path, **overrides: Any) -> PipelineConfig:
    return build_config({"data_dir": str(tmp_path / "data"), "dataset_schema": SCHEMA, "min_rows": 10, **overrides})


def run_etl(tmp_path: Path, source: str, run: str, chunk_rows: int) -> EtlResult:
    config = make_config(tmp_path, etl_chunk_rows=chunk_rows, max_bad_row_fraction=0.5)
    return etl(config, run=run, raw_data_path=source, raw_format="csv")
