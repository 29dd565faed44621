"""Whole-dataset decisions between the passes: which rows are positive, which are duplicates, and what each
column's missing values are filled with (medians and modes over the whole deduplicated dataset)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipeline.config import ColumnSpec, DatasetSchema
from mlpipeline.stages.etl.hashing import GOLDEN, U64, mix
from mlpipeline.stages.etl.pass_one import MAX_DISTINCT_LABELS, PassOne
from mlpipeline.stages.etl.result import EtlError

_SHOWN_LABELS = 10
_SHOWN_LABEL_CHARS = 50


def _labels_are_numbers(state: PassOne, schema: DatasetSchema) -> bool:
    """Whether labels compare as numbers ("1" and "1.0" are the same label when every label is a number)."""
    positive_number = pd.to_numeric(pd.Series([schema.positive_label]), errors="coerce").iloc[0]
    return bool(pd.notna(positive_number)) and state.target_all_numeric


def target_positive(state: PassOne, schema: DatasetSchema) -> np.ndarray:
    """Which clean rows are positive; refuses a target that is not binary over the whole snapshot."""
    as_numbers = _labels_are_numbers(state, schema)
    distinct = list(state.numeric_labels if as_numbers else state.text_labels)
    if len(distinct) > 2:
        count = f"more than {MAX_DISTINCT_LABELS}" if len(distinct) > MAX_DISTINCT_LABELS else str(len(distinct))
        raise EtlError(
            f"target {schema.target!r} has {count} distinct values ({distinct[:5]}...); "
            "only binary classification is supported"
        )
    parts = state.positive_if_numeric if as_numbers else state.positive_if_text
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def refuse_missing_classes(state: PassOne, positive: np.ndarray, schema: DatasetSchema) -> None:
    """Refuse clean rows that lack the positive class or the negative one: nothing a classifier could learn, and
    a ``positive_label`` that never occurs is almost always a setting that does not match the source."""
    if not positive.size or (positive.any() and not positive.all()):
        return
    labels = state.numeric_labels if _labels_are_numbers(state, schema) else state.text_labels
    seen = [_shown(label) for label in list(labels)[:_SHOWN_LABELS]]
    seen_text = ", ".join(seen) + (", ..." if len(labels) > _SHOWN_LABELS else "")
    if not positive.any():
        raise EtlError(
            f"positive_label {schema.positive_label!r} never occurs in target {schema.target!r} (in {positive.size}"
            f" clean rows); values seen: {seen_text}. Set dataset_schema.positive_label to the positive class"
        )
    raise EtlError(
        f"target {schema.target!r} holds only the positive class {schema.positive_label!r} in all {positive.size}"
        f" clean rows (values seen: {seen_text}); a classifier needs examples of both classes"
    )


def _shown(label: Any) -> str:
    """A label in a message: numbers as written ("1", "0.5"), text quoted and cut short."""
    if isinstance(label, (float, np.floating)):
        return f"{float(label):g}"
    return repr(str(label)[:_SHOWN_LABEL_CHARS])


def first_occurrences(state: PassOne, positive: np.ndarray) -> np.ndarray:
    """Keep-mask over the clean rows: the first of each group of identical rows (target included)."""
    hashes = np.concatenate(state.hashes) if state.hashes else np.zeros(0, dtype=U64)
    hashes = mix(hashes ^ (positive.astype(U64) * GOLDEN))
    return ~pd.Series(hashes, copy=False).duplicated(keep="first").to_numpy()


def row_groups(staging: pq.ParquetFile) -> Iterator[tuple[int, int, int]]:
    """(row group, first staged row, row past its end)."""
    start = 0
    for group in range(staging.num_row_groups):
        rows = staging.metadata.row_group(group).num_rows
        yield group, start, start + rows
        start += rows


def fill_values(staging: pq.ParquetFile, keep: np.ndarray, schema: DatasetSchema, present: set[str]) -> dict[str, Any]:
    """What each column with missing values is filled with, over the whole deduplicated dataset."""
    fills: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.name not in present:
            fill = _fill_for_absent(spec) if keep.any() else None
            if fill is not None:
                fills[spec.name] = fill
        elif spec.type in ("numeric", "integer", "date"):
            column = staging.read(columns=[spec.name]).column(0).to_numpy()[keep]
            missing = np.isnat(column) if spec.type == "date" else np.isnan(column)
            if missing.any():
                fills[spec.name] = _median_fill(column, missing, spec.type)
        else:
            counts, any_missing = _value_counts(staging, keep, spec.name)
            if any_missing:
                fills[spec.name] = _mode(counts) if counts else ("missing" if spec.type == "categorical" else False)
    return fills


def _fill_for_absent(spec: ColumnSpec) -> Any:
    """An optional column the source lacks is all missing: the fill for an empty column."""
    return {"numeric": 0.0, "integer": 0.0, "categorical": "missing", "boolean": False}.get(spec.type)


def _median_fill(column: np.ndarray, missing: np.ndarray, spec_type: str) -> Any:
    """The median of the known values; for dates the upper middle one (a real date), as ISO text."""
    if spec_type == "date":
        known = column[~missing]
        if not known.size:
            return None
        return pd.Timestamp(np.partition(known, known.size // 2)[known.size // 2]).isoformat()
    fill = float(pd.Series(column, copy=False).median()) if not missing.all() else 0.0
    return float(round(fill)) if spec_type == "integer" else fill


def _value_counts(staging: pq.ParquetFile, keep: np.ndarray, name: str) -> tuple[dict[Any, int], bool]:
    """Counts of the kept rows' known values of ``name``, and whether any kept row misses it."""
    counts: dict[Any, int] = {}
    any_missing = False
    for group, start, end in row_groups(staging):
        values = staging.read_row_group(group, columns=[name]).column(0).filter(pa.array(keep[start:end]))
        any_missing |= values.null_count > 0
        for item in pc.value_counts(values.drop_null()).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts, any_missing


def _mode(counts: dict[Any, int]) -> Any:
    """pandas' ``Series.mode().iloc[0]``: the most frequent value, the smallest one on ties."""
    most = max(counts.values())
    return min(value for value, count in counts.items() if count == most)
