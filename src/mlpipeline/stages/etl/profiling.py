"""The data profile: per-column statistics of a processed dataset (also the reference for drift monitoring)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipeline.config import DatasetSchema

_ARROW_TO_PANDAS_DTYPE = {"string": "object", "large_string": "object", "bool": "bool", "double": "float64"}


def _frequencies(counts: pd.Series) -> dict[str, float]:
    """``series.astype("string").value_counts(normalize=True).head(20)`` from counts in first-seen order."""
    if counts.empty:
        return {}
    proportions = (counts.sort_values(ascending=False) / counts.sum()).head(20)
    return {str(k): round(float(v), 6) for k, v in proportions.items()}


def _counted(kind: str, task: str) -> bool:
    """Whether a column is described by its values' frequencies (a regression target is a quantity)."""
    return kind in ("categorical", "boolean") or (kind == "target" and task != "regression")


def _column_stats(series: pd.Series, kind: str, task: str) -> dict[str, Any]:
    stats: dict[str, Any] = {"dtype": str(series.dtype), "missing": int(series.isna().sum()), "kind": kind}
    if kind == "date":
        stats.update(min=str(series.min()), max=str(series.max()))
    elif pd.api.types.is_bool_dtype(series) or _counted(kind, task):
        counts = series.astype("string").value_counts(normalize=True).head(20)
        stats["frequencies"] = {str(k): round(float(v), 6) for k, v in counts.items()}
    elif pd.api.types.is_numeric_dtype(series):
        described = series.describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95])
        stats.update({str(k): (None if pd.isna(v) else float(v)) for k, v in described.items() if k != "count"})
    return stats


def kind_of(name: str, schema: DatasetSchema) -> str:
    """What an output column is to the profile: its declared type, ``target`` or ``derived``."""
    types = {c.name: c.type for c in schema.columns}
    return types.get(name, "target" if name == schema.target else "derived")


def profile(frame: pd.DataFrame, schema: DatasetSchema, task: str = "binary") -> dict[str, Any]:
    """Per-column statistics of a processed dataset (also the reference for drift monitoring)."""
    columns = {name: _column_stats(frame[name], kind_of(name, schema), task) for name in frame.columns}
    return {"rows": len(frame), "columns": columns}


def profile_parquet(path: Path, schema: DatasetSchema, task: str = "binary", threads: int = 1) -> dict[str, Any]:
    """:func:`profile` of a processed Parquet file, reading one column at a time (the same numbers); ``threads``
    columns side by side (each holds a whole column)."""
    fields = list(pq.read_schema(path))
    with ThreadPoolExecutor(threads) as pool:
        stats = pool.map(lambda field_: _parquet_column_stats(path, field_, schema, task), fields)
        columns = {field_.name: column for field_, column in zip(fields, stats, strict=True)}
    return {"rows": pq.read_metadata(path).num_rows, "columns": columns}


def _parquet_column_stats(path: Path, field_: pa.Field, schema: DatasetSchema, task: str) -> dict[str, Any]:
    data = pq.ParquetFile(path)  # a reader per column: they may run on different threads
    name, kind = field_.name, kind_of(field_.name, schema)
    if not counted_field(field_, kind, task):  # numbers and dates: pandas on the whole column, as profile() does
        return _column_stats(data.read(columns=[name]).column(0).to_pandas(), kind, task)
    counts = CountedStats(field_, kind, task)
    for group in range(data.num_row_groups):
        counts.add(data.read_row_group(group, columns=[name]).column(0))
    return counts.stats()


def counted_field(field_: pa.Field, kind: str, task: str) -> bool:
    """Whether the profile of a column adds up batch by batch (text, booleans, labels); else it is described by
    pandas on the whole column (numbers, dates)."""
    text_like = pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type)
    return text_like or pa.types.is_boolean(field_.type) or _counted(kind, task)


class CountedStats:
    """:func:`profile`'s statistics of a counted column (see :func:`counted_field`), added up batch by batch."""

    def __init__(self, field_: pa.Field, kind: str, task: str) -> None:
        self._field, self._kind = field_, kind
        self._frequencies = _counted(kind, task) or pa.types.is_boolean(field_.type)
        self._missing = 0
        self._counts: dict[Any, int] = {}  # in order of first appearance

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        self._missing += values.null_count
        if self._frequencies:
            for item in pc.value_counts(values.drop_null()).to_pylist():
                self._counts[item["values"]] = self._counts.get(item["values"], 0) + item["counts"]

    def stats(self) -> dict[str, Any]:
        dtype = _ARROW_TO_PANDAS_DTYPE.get(str(self._field.type), str(self._field.type))
        stats: dict[str, Any] = {"dtype": dtype, "missing": self._missing, "kind": self._kind}
        if self._frequencies:
            counts = self._counts
            stats["frequencies"] = _frequencies(pd.Series(list(counts.values()), index=[str(k) for k in counts]))
        return stats


def column_stats(values: pa.Array | pa.ChunkedArray, name: str, schema: DatasetSchema, task: str) -> dict[str, Any]:
    """:func:`profile`'s statistics of a whole column (as pandas computes them on it)."""
    return _column_stats(values.to_pandas(), kind_of(name, schema), task)
