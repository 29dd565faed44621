"""The columns the ETL uses: declared or inferred (and frozen), ``exclude``d ones never, names as the source spells
them (spaces, parentheses, units, slashes), and why each other column is left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.stages.etl import EtlError, EtlResult, etl, resolved_config

SPECIES = [
    "Adelie Penguin (Pygoscelis adeliae)",
    "Chinstrap penguin (Pygoscelis antarctica)",
    "Gentoo penguin (Pygoscelis papua)",
]
HEADER = [
    "Sample Number",
    "Species",
    "Culmen Length (mm)",
    "Delta 15 N (o/oo)",
    "Body Mass/g",
    "Date Egg",
    "Clutch Completion",
    "Comments",
]
DECLARED = [
    {"name": "Culmen Length (mm)", "type": "numeric", "min": 0},
    {"name": "Delta 15 N (o/oo)", "type": "numeric"},
    {"name": "Body Mass/g", "type": "integer"},
    {"name": "Date Egg", "type": "date"},
    {"name": "Clutch Completion", "type": "boolean"},
]


def penguin_rows(n: int) -> list[list[str]]:
    """Penguins-raw-like rows: the sample number counts rows, the comments are sentences."""
    return [
        [
            str(i + 1),
            SPECIES[i % 3],
            f"{35 + (i * 7) % 20 + 0.1 * (i % 10):.1f}",
            f"{8 + (i * 3) % 2 + 0.01 * (i % 50):.5f}",
            str(3000 + (i * 137) % 2000),
            f"2007-11-{1 + i % 28:02d}",
            "Yes" if i % 4 else "No",
            f"Nest {i} observed by the field team in the morning" if i % 5 == 0 else "",
        ]
        for i in range(n)
    ]


def write_csv(tmp_path: Path, rows: list[list[str]]) -> str:
    path = tmp_path / "penguins.csv"
    pd.DataFrame(rows, columns=HEADER).to_csv(path, index=False)
    return str(path)


def config_for(tmp_path: Path, **schema: Any) -> PipelineConfig:
    return build_config({"data_dir": str(tmp_path / "data"), "min_rows": 10, "dataset_schema": schema})


def run(tmp_path: Path, config: PipelineConfig, source: str, run_id: str = "r1") -> EtlResult:
    return etl(config, run=run_id, raw_data_path=source, raw_format="csv")


def test_declared_columns_with_odd_names_work_through_the_etl(tmp_path: Path) -> None:
    rows = penguin_rows(40)
    rows[2][2] = "n.a."  # not a number: quarantined, named as the source names the column
    rows[3][3] = ""  # missing: imputed
    config = config_for(tmp_path, target="Species", id_column="Sample Number", columns=DECLARED)
    result = run(tmp_path, config, write_csv(tmp_path, rows))
    quarantine = pd.read_csv(result.quarantine_path, dtype=str)
    assert quarantine[["Sample Number", "_reason"]].values.tolist() == [["3", "Culmen Length (mm): not a number"]]
    frame = pd.read_parquet(result.data_path)
    assert list(frame.columns) == [
        "Sample Number",
        *(c["name"] for c in DECLARED),
        "Species",
        "Date Egg_year",
        "Date Egg_month",
        "Date Egg_dayofweek",
        "Date Egg_dayofyear",
    ]
    assert frame["Delta 15 N (o/oo)"].notna().all() and frame["Body Mass/g"].dtype == "int64"
    assert result.task == "multiclass" and result.classes == SPECIES
    profile = json.loads(Path(result.profile_path).read_text())
    assert "Delta 15 N (o/oo)" in profile["imputed_with"]
    assert profile["target"]["classes"] == {SPECIES[0]: 14, SPECIES[1]: 13, SPECIES[2]: 12}  # one quarantined
    resolved = resolved_config(config, result)
    assert resolved.dataset_schema.feature_names == [c["name"] for c in DECLARED]


def test_excluded_and_undeclared_columns_are_never_used_and_say_why(tmp_path: Path) -> None:
    rows = penguin_rows(30)
    rows[4][7] = "x" * 100  # longer than max_cell_chars: would quarantine the row if the column were used
    config = config_for(
        tmp_path, target="Species", id_column="Sample Number", columns=DECLARED[:3], exclude=["Comments", "Absent"]
    )
    config = config.model_copy(update={"max_cell_chars": 60})
    result = run(tmp_path, config, write_csv(tmp_path, rows))
    assert result.rows_quarantined == 0
    assert "Comments" not in pd.read_parquet(result.data_path).columns
    assert result.excluded == {
        "Sample Number": "the id column",
        "Species": "the target",
        "Date Egg": "not in dataset_schema.columns",
        "Clutch Completion": "not in dataset_schema.columns",
        "Comments": "listed in dataset_schema.exclude",
    }
    assert result.schema["exclude"] == ["Comments", "Absent"]


def test_columns_are_inferred_frozen_and_resolved_when_not_declared(tmp_path: Path) -> None:
    rows = penguin_rows(60)
    rows[10][3] = ""  # a gap: still numeric, imputed
    config = config_for(tmp_path, target="Species", exclude=["Clutch Completion", "Absent"])
    source = write_csv(tmp_path, rows)
    result = run(tmp_path, config, source)
    inferred = {c["name"]: c["type"] for c in result.schema["columns"]}
    assert inferred == {
        "Culmen Length (mm)": "numeric",
        "Delta 15 N (o/oo)": "numeric",
        "Body Mass/g": "integer",
        "Date Egg": "date",
    }
    assert result.excluded["Species"] == "the target"
    assert result.excluded["Clutch Completion"] == "listed in dataset_schema.exclude"
    assert result.excluded["Sample Number"].startswith("id-like")
    assert result.excluded["Comments"].startswith(("free text", "mostly empty"))
    assert "Absent" not in result.excluded
    assert result.task == "multiclass" and result.rows_out == 60
    resolved = resolved_config(config, result)
    assert resolved.dataset_schema.feature_names == list(inferred)
    assert resolved.declared is not None and resolved.declared["dataset_schema"]["columns"] is None

    # A later run reuses the frozen columns, even where its own snapshot would infer another type.
    later = penguin_rows(60)
    for row in later[:3]:
        row[4] += ".5"  # Body Mass/g would be numeric now: the frozen integer column quarantines these rows
    again = run(tmp_path, config, write_csv(tmp_path, later), run_id="r2")
    assert again.schema["columns"] == result.schema["columns"]
    reasons = pd.read_csv(again.quarantine_path)["_reason"].tolist()
    assert reasons == ["Body Mass/g: not an integer"] * 3


def test_a_schema_that_cannot_be_inferred_is_an_etl_error(tmp_path: Path) -> None:
    config = config_for(tmp_path, target="species")  # not a column: names are as the source spells them
    with pytest.raises(EtlError, match=r"cannot infer the dataset schema: the target 'species' is not a column"):
        run(tmp_path, config, write_csv(tmp_path, penguin_rows(20)))


def test_a_target_that_is_also_the_id_column_is_refused(tmp_path: Path) -> None:
    config = config_for(tmp_path, target="Species", id_column="Species", columns=DECLARED)
    with pytest.raises(EtlError, match=r"the target 'Species' is also the id_column"):
        run(tmp_path, config, write_csv(tmp_path, penguin_rows(20)))
