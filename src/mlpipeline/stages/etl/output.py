"""Pass 2 over the staged row groups: drop duplicates, impute, final types, date parts -> ``features.parquet``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipeline.config import ColumnSpec, DatasetSchema
from mlpipeline.features import DATE_PARTS, date_part_columns
from mlpipeline.stages.crawl import rechunk
from mlpipeline.stages.etl.coerce import STAGED_TYPES
from mlpipeline.stages.etl.dataset import row_groups
from mlpipeline.stages.etl.staging import Staging
from mlpipeline.stages.etl.target import TargetPlan

# The Arrow kernel of each of mlpipeline.features.DATE_PARTS (pandas' .dt accessors of the same names).
_ARROW_DATE_PARTS = {"year": pc.year, "month": pc.month, "dayofweek": pc.day_of_week, "dayofyear": pc.day_of_year}
OUTPUT_ROW_GROUP = 1024 * 1024  # pyarrow's default row group length, which DataFrame.to_parquet uses


def _output_table(
    staged: pa.Table,
    plan: TargetPlan,
    schema: DatasetSchema,
    present: set[str],
    fills: dict[str, Any],
) -> pa.Table:
    """Output rows from kept staged rows: the id, every feature column imputed, the target as the task writes it,
    date parts."""
    rows = staged.num_rows
    columns: dict[str, pa.Array] = {}
    if schema.id_column and schema.id_column in present:
        columns[schema.id_column] = staged.column(schema.id_column).combine_chunks()
    dates: dict[str, pa.Array] = {}
    for spec in schema.resolved_columns():
        staged_values = staged.column(spec.name).combine_chunks() if spec.name in present else None
        columns[spec.name] = output_values(spec, staged_values, rows, fills)
        if spec.type == "date":
            dates[spec.name] = columns[spec.name]
    columns[schema.target] = plan.values(staged.column(schema.target).combine_chunks())
    for name, values in dates.items():
        columns.update(date_parts(name, values))
    return pa.table(columns)


def output_values(
    spec: ColumnSpec, staged: pa.Array | pa.ChunkedArray | None, rows: int, fills: dict[str, Any]
) -> pa.Array:
    """A declared column's output values from its kept staged values (None: the source lacks the column)."""
    if staged is None and spec.type == "date":  # stays an all-NaN float column, as pandas leaves it
        return pa.nulls(rows, pa.float64())
    return _imputed(pa.nulls(rows, STAGED_TYPES[spec.type]) if staged is None else staged, spec, fills)


def date_parts(name: str, values: pa.Array) -> dict[str, pa.Array]:
    """:func:`mlpipeline.features.add_date_parts` in Arrow: float64 parts, missing where the date is (Monday is
    day 0 of the week, as in pandas)."""
    return {column: date_part(values, part) for column, part in zip(date_part_columns(name), DATE_PARTS, strict=True)}


def date_part(values: pa.Array, part: str) -> pa.Array:
    """One of :func:`date_parts` (all missing when a declared date column the source lacks has no dates)."""
    if not pa.types.is_timestamp(values.type):
        return pa.nulls(len(values), pa.float64())
    return pc.cast(_ARROW_DATE_PARTS[part](values), pa.float64())


def _imputed(values: pa.Array, spec: ColumnSpec, fills: dict[str, Any]) -> pa.Array:
    """``values`` in the output's type, missing values filled when the column has a fill."""
    fill = fills.get(spec.name)
    if spec.type in ("numeric", "integer"):
        numbers = values.to_numpy(zero_copy_only=False)
        if spec.name in fills:
            numbers = np.where(np.isnan(numbers), fill, numbers)
        return pa.array(numbers.astype(np.int64) if spec.type == "integer" else numbers)
    if spec.type == "date":
        if fill is None:
            return values
        return pc.fill_null(values, pa.scalar(pd.Timestamp(fill).value, pa.timestamp("ns")))
    if not values.null_count:
        return values
    return pc.fill_null(values, bool(fill) if spec.type == "boolean" else str(fill))


def _with_pandas_metadata(table: pa.Table) -> pa.Schema:
    """The schema ``DataFrame.to_parquet`` would write (pandas metadata included) for frames like ``table``."""
    sample = table.slice(0, 1000).to_pandas()
    pandas_schema = pa.Schema.from_pandas(sample, preserve_index=False)
    return table.schema.with_metadata(pandas_schema.metadata)


def write_features(
    staging_path: Path,
    target: Path,
    keep: np.ndarray,
    plan: TargetPlan,
    schema: DatasetSchema,
    present: set[str],
    fills: dict[str, Any],
    on_table: Callable[[pa.Table], None] = lambda table: None,
) -> int:
    """Write the output in row groups of ``OUTPUT_ROW_GROUP`` rows, as ``DataFrame.to_parquet`` does: the file's
    bytes (and so ``data_sha256``) do not depend on the chunk size; ``on_table`` sees each staged batch's output
    rows first. Returns the rows written."""
    staging = Staging(staging_path)
    tables = (
        _output_table(
            staging.read_row_group(group).filter(pa.array(keep[start:end])),
            plan,
            schema,
            present,
            fills,
        )
        for group, start, end in row_groups(staging)
    )
    first = next(tables, None)
    if first is None:
        return 0
    file_schema = _with_pandas_metadata(first)
    rows_out = 0
    with pq.ParquetWriter(target, file_schema, compression="snappy") as writer:
        same_metadata = (
            table.replace_schema_metadata(file_schema.metadata) for table in itertools.chain([first], tables)
        )
        for group in rechunk(_seen(same_metadata, on_table), OUTPUT_ROW_GROUP):
            writer.write_table(group, row_group_size=OUTPUT_ROW_GROUP)
            rows_out += group.num_rows
    return rows_out


def _seen(tables: Iterator[pa.Table], on_table: Callable[[pa.Table], None]) -> Iterator[pa.Table]:
    for table in tables:
        on_table(table)
        yield table
