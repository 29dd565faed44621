"""Task kinds: the target of a binary, multiclass or regression task as the processed data holds it, the ``auto``
decision, a binary task's unset positive label, and targets that make no task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import build_config
from mlpipeline.stages.etl import EtlError, EtlResult, etl, resolved_config
from tests.stages.etl.support import good_rows

HEADER = "id,amount,count,colour,active,seen,label"
# No positive_label: the ETL picks one for a binary target.
SCHEMA: dict[str, Any] = {
    "target": "label",
    "id_column": "id",
    "columns": [
        {"name": "amount", "type": "numeric"},
        {"name": "count", "type": "integer"},
        {"name": "colour", "type": "categorical"},
        {"name": "active", "type": "boolean"},
        {"name": "seen", "type": "date"},
    ],
}


def with_labels(labels: list[Any]) -> list[str]:
    """``good_rows`` (all distinct) with these target values."""
    return [r[: r.rindex(",")] + f",{label}" for r, label in zip(good_rows(len(labels)), labels, strict=True)]


def run(tmp_path: Path, rows: list[str], run_id: str = "r1", **overrides: Any) -> EtlResult:
    source = tmp_path / f"{run_id}.csv"
    source.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    settings = {"data_dir": str(tmp_path / "data"), "dataset_schema": SCHEMA, "min_rows": 10, **overrides}
    return etl(build_config(settings), run=run_id, raw_data_path=str(source), raw_format="csv")


def target_of(result: EtlResult) -> pd.Series:
    return pd.read_parquet(result.data_path)["label"]


def profile_of(result: EtlResult) -> dict[str, Any]:
    return json.loads(Path(result.profile_path).read_text())


# --- multiclass ---------------------------------------------------------------------------------------------------


def test_text_labels_are_a_multiclass_target_kept_as_text(tmp_path: Path) -> None:
    species = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    result = run(tmp_path, with_labels([species[i % 3] for i in range(30)]))  # task auto
    target = target_of(result)
    assert result.task == "multiclass"
    assert target.tolist() == [species[i % 3] for i in range(30)]
    assert target.dtype == object
    assert result.classes == species and result.positive_label is None
    profile = profile_of(result)
    assert profile["task"] == "multiclass"
    assert profile["target"]["classes"] == dict.fromkeys(species, 10)
    assert profile["columns"]["label"]["frequencies"] == {s: pytest.approx(1 / 3, abs=1e-6) for s in species}


def test_integer_labels_are_int64_and_one_label_however_written(tmp_path: Path) -> None:
    labels = [i % 4 for i in range(40)]
    labels[5] = " 1.0"  # the label 1, padded and written as a decimal
    result = run(tmp_path, with_labels(labels), task="multiclass")
    target = target_of(result)
    assert target.dtype == np.int64
    assert target.tolist() == [i % 4 for i in range(40)]
    assert result.classes == [0, 1, 2, 3]
    assert profile_of(result)["target"]["classes"] == {"0": 10, "1": 10, "2": 10, "3": 10}


def test_fractional_labels_of_a_declared_multiclass_task_are_float64(tmp_path: Path) -> None:
    result = run(tmp_path, with_labels([0.5 + i % 3 for i in range(30)]), task="multiclass")
    assert target_of(result).dtype == np.float64
    assert result.classes == [0.5, 1.5, 2.5]


def test_mixed_numbers_and_text_are_text_labels(tmp_path: Path) -> None:
    result = run(tmp_path, with_labels(["1", "2", "x"] * 10), task="multiclass")
    assert result.classes == ["1", "2", "x"] and target_of(result).dtype == object


def test_a_multiclass_task_with_one_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match=r"target 'label' holds only the class 'a' in all 30 clean rows"):
        run(tmp_path, with_labels(["a"] * 30), task="multiclass")


def test_a_text_target_with_more_than_max_classes_values_looks_like_an_id(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match=r"has 1001 distinct values \('u0', 'u1', .*looks like an id or free text"):
        run(tmp_path, with_labels([f"u{i}" for i in range(1001)]))


# --- regression ---------------------------------------------------------------------------------------------------


def test_a_regression_target_is_float64_and_a_non_number_is_quarantined(tmp_path: Path) -> None:
    values: list[Any] = [round(10 + i * 1.7, 1) for i in range(40)]
    values[3], values[4], values[5] = "n/a-ish", "inf", " 12 "
    result = run(tmp_path, with_labels(values), task="regression")
    quarantine = pd.read_csv(result.quarantine_path, dtype=str)
    assert dict(zip(quarantine["id"], quarantine["_reason"], strict=True)) == {
        "3": "label: not a number",
        "4": "label: not a finite number",
    }
    target = target_of(result)
    assert target.dtype == np.float64 and result.rows_out == 38
    assert target.tolist() == [v if i != 5 else 12.0 for i, v in enumerate(values) if i not in (3, 4)]
    assert result.task == "regression" and result.classes == [] and result.positive_label is None
    summary = profile_of(result)["target"]
    assert summary == {
        "name": "label",
        "task": "regression",
        "min": 10.0,
        "mean": pytest.approx(target.mean()),
        "max": target.max(),
    }
    assert "frequencies" not in profile_of(result)["columns"]["label"]  # a quantity: min, mean, percentiles
    assert profile_of(result)["columns"]["label"]["50%"] == pytest.approx(target.median())


def test_a_constant_regression_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match=r"target 'label' is 7 in all 30 clean rows: a constant"):
        run(tmp_path, with_labels(["7"] * 29 + ["7.0"]), task="regression")


def test_rows_differing_only_in_the_target_are_not_duplicates(tmp_path: Path) -> None:
    rows = with_labels([float(i) for i in range(20)])
    twin = rows[0][: rows[0].rindex(",")]
    rows += [twin + ",100.5", twin + ",0.0"]  # another value: kept; the same value (0 as 0.0): a duplicate
    result = run(tmp_path, rows, task="regression")
    assert result.rows_out == 21 and result.duplicates_dropped == 1


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_output_does_not_depend_on_the_chunk_size(tmp_path: Path, task: str) -> None:
    rows = with_labels([i % 5 + (0.25 if task == "regression" else 0) for i in range(60)])
    rows[7] = "7,abc,2,red,true,2024-01-11,1"  # quarantined
    rows += [rows[0], rows[30]]
    results = [run(tmp_path, rows, f"c{size}", task=task, etl_chunk_rows=size) for size in (4, 1000)]
    assert results[0].data_sha256 == results[1].data_sha256
    assert results[0].classes == results[1].classes
    assert Path(results[0].profile_path).read_text() == Path(results[1].profile_path).read_text()
    assert (results[0].rows_quarantined, results[0].duplicates_dropped) == (1, 2)


# --- task: auto ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        (["setosa", "versicolor", "virginica"] * 10, "multiclass"),  # iris
        ([25 + (i * 37) % 320 for i in range(60)], "regression"),  # diabetes: many whole numbers
        ([i % 2 for i in range(30)], "binary"),
        ([3 + i % 6 for i in range(30)], "multiclass"),  # wine quality: few whole numbers
        ([0.5, 1.5] * 15, "regression"),  # fractional numbers, however few
        (["yes", "no"] * 15, "binary"),
        ([1, 2, "many"] * 10, "multiclass"),  # any non-number: labels
    ],
)
def test_auto_decides_the_task_from_the_target(tmp_path: Path, labels: list[Any], task: str) -> None:
    result = run(tmp_path, with_labels(labels))
    assert result.task == task
    assert profile_of(result)["task"] == task


def test_a_numeric_target_past_the_label_cap_is_a_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpipeline.stages.etl import target

    monkeypatch.setattr(target, "MAX_DISTINCT_LABELS", 5)  # counting stops: a quantity all the same
    result = run(tmp_path, with_labels([i * 3 for i in range(30)]), etl_chunk_rows=4)
    assert result.task == "regression" and result.rows_out == 30


# --- a binary task's positive label -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "positive", "chosen_by"),
    [
        (["0", "1"], "1", "the label 1"),
        (["0.0", "1.0"], "1", "the label 1"),  # numbers compare as numbers: written as the number reads
        (["No", "Yes"], "Yes", "the label yes"),  # case ignored, the label as the data writes it
        (["F", "T"], "T", "the label t"),
        (["cat", "dog", "dog"], "cat", "the rarer class"),
        (["2", "5", "5", "5"], "2", "the rarer class"),
        (["cat", "dog"], "dog", "the rarer class"),  # a tie: the larger label
    ],
)
def test_an_unset_positive_label_is_picked_and_recorded(
    tmp_path: Path, labels: list[str], positive: str, chosen_by: str
) -> None:
    values = [labels[i % len(labels)] for i in range(36)]
    result = run(tmp_path, with_labels(values))
    assert result.task == "binary" and result.positive_label == positive and result.classes == [0, 1]
    is_positive = [float(v) == float(positive) if positive[0].isdigit() else v == positive for v in values]
    assert target_of(result).tolist() == [int(p) for p in is_positive]
    assert target_of(result).dtype == np.int64
    summary = profile_of(result)["target"]
    assert summary["positive_label"] == positive and summary["positive_label_from"].startswith(chosen_by)
    assert summary["classes"] == {"0": is_positive.count(False), "1": is_positive.count(True)}
    assert result.schema["positive_label"] == positive


def test_a_declared_positive_label_wins_over_the_pick(tmp_path: Path) -> None:
    schema = {**SCHEMA, "positive_label": "0"}
    result = run(tmp_path, with_labels([i % 2 for i in range(30)]), dataset_schema=schema)
    assert result.positive_label == "0" and target_of(result).tolist() == [1 - i % 2 for i in range(30)]
    assert profile_of(result)["target"]["positive_label_from"] == "dataset_schema.positive_label"


def test_one_class_with_no_positive_label_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match=r"holds only the class 0 in all 30 clean rows; a classifier needs"):
        run(tmp_path, with_labels([0] * 30), task="binary")


# --- the config the later stages get ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "task", "metric", "positive"),
    [
        (["no", "yes", "no"], "binary", "accuracy", "yes"),
        (["a", "b", "c"], "multiclass", "accuracy", None),
        ([0.5, 1.25, 2.0, 7.5], "regression", "r2", None),
    ],
)
def test_resolved_config_has_the_task_metric_and_positive_label(
    tmp_path: Path, labels: list[Any], task: str, metric: str, positive: str | None
) -> None:
    config = build_config({"data_dir": str(tmp_path / "data"), "dataset_schema": SCHEMA, "min_rows": 10})
    result = run(tmp_path, with_labels([labels[i % len(labels)] for i in range(40)]))
    resolved = resolved_config(config, result)
    assert (resolved.task, resolved.validation_metric, resolved.dataset_schema.positive_label) == (
        task,
        metric,
        positive,
    )
    assert resolved.dataset_schema.feature_names == ["amount", "count", "colour", "active", "seen"]
    assert resolved.declared is not None and resolved.declared["task"] == "auto"


def test_a_record_written_before_the_task_fields_still_loads_and_resolves(tmp_path: Path) -> None:
    config = build_config({"data_dir": str(tmp_path / "data"), "dataset_schema": {**SCHEMA, "positive_label": "1"}})
    result = run(tmp_path, with_labels([i % 2 for i in range(30)]))
    record = Path(result.processed_dir) / "etl.json"
    old = json.loads(record.read_text())
    for name in ("task", "classes", "positive_label", "schema", "excluded"):
        old.pop(name)
    record.write_text(json.dumps(old))
    reloaded = run(tmp_path, [])  # the run's output exists: the record is returned as it is
    assert (reloaded.task, reloaded.classes, reloaded.schema) == ("binary", [0, 1], {})
    resolved = resolved_config(config, reloaded)
    assert resolved.task == "binary" and resolved.dataset_schema.positive_label == "1"
