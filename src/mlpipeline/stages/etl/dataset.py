"""Whole-dataset decisions between the passes: which rows are duplicates, and what each column's missing values
are filled with (medians and modes over the whole deduplicated dataset)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlpipeline.config import ColumnSpec, DatasetSchema
from mlpipeline.stages.etl.hashing import GOLDEN, U64, hash_values, mix
from mlpipeline.stages.etl.pass_one import PassOne
from mlpipeline.stages.etl.staging import Staging
from mlpipeline.stages.etl.target import TargetPlan


def first_occurrences(state: PassOne, staging: Staging, target: str, plan: TargetPlan) -> np.ndarray:
    """Keep-mask over the clean rows: the first of each group of identical rows, the target's value included (as
    the task writes it: "1" and "1.0" are one label when labels compare as numbers)."""
    hashes = np.concatenate(state.hashes) if state.hashes else np.zeros(0, dtype=U64)
    state.hashes.clear()  # the per-chunk copies: the largest arrays held here besides the hash table below
    if staging.num_row_groups:
        target_hashes = np.concatenate(
            [
                hash_values(plan.values(staging.read_row_group(group, columns=[target]).column(0).combine_chunks()))
                for group in range(staging.num_row_groups)
            ]
        )
        hashes *= GOLDEN
        hashes += target_hashes
        del target_hashes
        hashes = mix(hashes)
    return ~pd.Series(hashes, copy=False).duplicated(keep="first").to_numpy()


def row_groups(staging: Staging) -> Iterator[tuple[int, int, int]]:
    """(row group, first staged row, row past its end)."""
    start = 0
    for group in range(staging.num_row_groups):
        rows = staging.rows(group)
        yield group, start, start + rows
        start += rows


def fill_values(
    staging: Staging, keep: np.ndarray, schema: DatasetSchema, present: set[str], threads: int = 1
) -> dict[str, Any]:
    """What each column with missing values is filled with, over the whole deduplicated dataset (a column at a
    time per thread: a column of kept values is the largest thing each holds)."""
    specs = schema.resolved_columns()
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda spec: _fill_value(staging, keep, spec, present), specs))
    return {spec.name: fill for spec, (has_fill, fill) in zip(specs, found, strict=True) if has_fill}


def _fill_value(staging: Staging, keep: np.ndarray, spec: ColumnSpec, present: set[str]) -> tuple[bool, Any]:
    """Whether ``spec``'s column gets a fill, and which."""
    if spec.name not in present:
        fill = _fill_for_absent(spec) if keep.any() else None
        return fill is not None, fill
    if spec.type in ("numeric", "integer", "date"):
        column = _kept_values(staging, keep, spec.name, "datetime64[ns]" if spec.type == "date" else "float64")
        missing = np.isnat(column) if spec.type == "date" else np.isnan(column)
        return bool(missing.any()), (_median_fill(column, missing, spec.type) if missing.any() else None)
    counts, any_missing = _value_counts(staging, keep, spec.name)
    if not any_missing:
        return False, None
    return True, _mode(counts) if counts else ("missing" if spec.type == "categorical" else False)


def _kept_values(staging: Staging, keep: np.ndarray, name: str, dtype: str) -> np.ndarray:
    """The kept rows' values of a staged column, gathered a batch at a time (only the kept values are held)."""
    kept = np.empty(int(keep.sum()), dtype=dtype)
    at = 0
    for group, start, end in row_groups(staging):
        values = staging.read_row_group(group, columns=[name]).column(0).to_numpy()[keep[start:end]]
        kept[at : at + len(values)] = values
        at += len(values)
    return kept


def kept_column(staging: Staging, keep: np.ndarray, name: str) -> pa.ChunkedArray:
    """The kept rows' values of a staged column as staged, a batch at a time."""
    batches = [
        staging.read_row_group(group, columns=[name]).column(0).filter(pa.array(keep[start:end]))
        for group, start, end in row_groups(staging)
    ]
    return pa.chunked_array([chunk for batch in batches for chunk in batch.chunks], staging.schema.field(name).type)


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


def _value_counts(staging: Staging, keep: np.ndarray, name: str) -> tuple[dict[Any, int], bool]:
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
