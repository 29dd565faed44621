"""Pass 2 and the data profile: the fills, then ``features.parquet`` from the staged batches; the profile without
reading the output back. The counted columns' statistics (text, booleans, labels) add up batch by batch as the
batches are written; the columns pandas describes whole (numbers, dates) are rebuilt from the kept staged values,
on a second thread while the Parquet file is written when that fits in the memory a chunk took, else after it
(several side by side when they fit in what the output's row group took)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlpipeline.config import ColumnSpec, DatasetSchema
from mlpipeline.features import DATE_PARTS, date_part_columns
from mlpipeline.stages.etl.dataset import fill_values, kept_column
from mlpipeline.stages.etl.output import date_part, output_values, write_features
from mlpipeline.stages.etl.profiling import CountedStats, column_stats, counted_field, kind_of
from mlpipeline.stages.etl.result import FEATURES_FILE, STAGING_FILE
from mlpipeline.stages.etl.staging import Staging
from mlpipeline.stages.etl.target import TargetPlan


class _Counted:
    """The counted columns' statistics over the output tables, in the output's column order."""

    def __init__(self, schema: DatasetSchema, task: str) -> None:
        self._schema, self._task = schema, task
        self.fields: list[pa.Field] = []
        self.stats: dict[str, CountedStats] = {}

    def add(self, table: pa.Table) -> None:
        if not self.fields:  # the first table fixes the columns
            self.fields = list(table.schema)
            for field_ in self.fields:
                kind = kind_of(field_.name, self._schema)
                if counted_field(field_, kind, self._task):
                    self.stats[field_.name] = CountedStats(field_, kind, self._task)
        for name, stats in self.stats.items():
            stats.add(table.column(name))


@dataclass(frozen=True)
class WholeColumnThreads:
    """How the steps that hold whole columns (the fills, the profile's numbers and dates) use the threads."""

    side_by_side: int  # whole columns worked on at once
    during_write: bool  # the profile's whole columns described (one at a time) while the output is written


def write_output_and_profile(
    tmp: Path,
    keep: np.ndarray,
    plan: TargetPlan,
    schema: DatasetSchema,
    present: set[str],
    threads: WholeColumnThreads,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pass 2 (``features.parquet`` from the staged rows) and the profile's columns; returns the fill of each
    column that had gaps and the profile (``rows`` and ``columns``)."""
    staging_path = tmp / STAGING_FILE
    staging = Staging(staging_path)
    fills = fill_values(staging, keep, schema, present, threads.side_by_side)
    counted = _Counted(schema, plan.task)

    def describe(side_by_side: int) -> dict[str, dict[str, Any]]:
        return _whole_column_stats(staging, keep, plan, schema, present, fills, side_by_side)

    with ThreadPoolExecutor(1, thread_name_prefix="etl-profile") as describer:
        described = describer.submit(describe, 1) if threads.during_write else None
        rows = write_features(staging_path, tmp / FEATURES_FILE, keep, plan, schema, present, fills, counted.add)
        whole = described.result() if described is not None else describe(threads.side_by_side)
    staging_path.unlink()
    pa.default_memory_pool().release_unused()
    columns = {
        field_.name: counted.stats[field_.name].stats() if field_.name in counted.stats else whole[field_.name]
        for field_ in counted.fields
    }
    return fills, {"rows": rows, "columns": columns}


def _whole_column_stats(
    staging: Staging,
    keep: np.ndarray,
    plan: TargetPlan,
    schema: DatasetSchema,
    present: set[str],
    fills: dict[str, Any],
    side_by_side: int,
) -> dict[str, dict[str, Any]]:
    """The profile of every output column that is not counted, each built whole from the kept staged values
    exactly as pass 2 builds it; ``side_by_side`` declared columns at a time (each with its date parts)."""
    rows, task = int(keep.sum()), plan.task

    def declared(spec: ColumnSpec) -> dict[str, dict[str, Any]]:
        staged = kept_column(staging, keep, spec.name) if spec.name in present else None
        values = output_values(spec, staged, rows, fills)
        del staged
        stats = {spec.name: column_stats(values, spec.name, schema, task)}
        if spec.type == "date":
            for name, part in zip(date_part_columns(spec.name), DATE_PARTS, strict=True):
                stats[name] = column_stats(date_part(values, part), name, schema, task)
        return stats

    specs = [spec for spec in schema.resolved_columns() if spec.type in ("numeric", "integer", "date")]
    with ThreadPoolExecutor(side_by_side, thread_name_prefix="etl-describe") as pool:
        found = {name: stats for part in pool.map(declared, specs) for name, stats in part.items()}
    if task == "regression":  # a quantity: described whole (a class label is counted)
        targets = kept_column(staging, keep, schema.target).chunks
        values = pa.chunked_array([plan.values(chunk) for chunk in targets], pa.float64())
        found[schema.target] = column_stats(values, schema.target, schema, task)
    return found
