"""Pass 1 over the raw chunks: type every column, append the bad rows with their reason to ``quarantine.csv``,
write the clean rows (their target as text) to the staging file (:mod:`.staging`), hash each clean row without
its target (for the dedupe across chunks) and count the clean rows' target values (:class:`~.target.TargetStats`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlpipeline.config import DatasetSchema, PipelineConfig
from mlpipeline.stages.etl.coerce import (
    STAGED_TYPES,
    Typed,
    as_text,
    check_columns,
    check_lengths,
    coerce_column,
    flag,
    missing,
    parse_numbers,
)
from mlpipeline.stages.etl.hashing import hash_rows
from mlpipeline.stages.etl.reading import (
    FastReaderGaveUp,
    ReadError,
    arrow_csv_chunks,
    pandas_chunks,
    read_ahead,
    refuse_duplicate_columns,
)
from mlpipeline.stages.etl.result import QUARANTINE_FILE, STAGING_FILE, EtlError
from mlpipeline.stages.etl.staging import StagingWriter
from mlpipeline.stages.etl.target import TargetStats

_QUARANTINE_TOP_REASONS = 50
# A quarantined value longer than this is cut (and marked): enough to see what is wrong with it, and the
# quarantine file stays within max_quarantine_rows x columns x this many characters.
QUARANTINE_CELL_CHARS = 1_000
_CUT_MARK = "…[cut]"


@dataclass
class PassOne:
    """What pass 1 learned about the whole snapshot."""

    columns: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_bad: int = 0
    rows_quarantine_written: int = 0  # at most max_quarantine_rows of the rows_bad
    missing_counts: dict[str, int] = field(default_factory=dict)  # declared column -> clean rows without a value
    reason_counts: dict[str, int] = field(default_factory=dict)
    hashes: list[np.ndarray] = field(default_factory=list)  # of the clean rows, target not included
    target: TargetStats = field(default_factory=TargetStats)


def read_pass_one(raw_data_path: str, raw_format: str, config: PipelineConfig, tmp: Path) -> tuple[PassOne, set[str]]:
    """Pass 1 over the snapshot, writing ``tmp/quarantine.csv`` and the staging file; also the columns present."""
    quarantine, staging = tmp / QUARANTINE_FILE, tmp / STAGING_FILE
    chunk_rows = config.etl_chunk_rows
    refuse_duplicate_columns(raw_data_path, raw_format)
    try:
        if raw_format == "csv":
            try:
                chunks = arrow_csv_chunks(raw_data_path, chunk_rows)
                return _pass_one(chunks, config, quarantine, staging, tokens_are_missing=True)
            except FastReaderGaveUp:
                pass  # pandas reads some CSVs Arrow refuses (ragged rows, blank headers): start over with it
        return _pass_one(pandas_chunks(raw_data_path, raw_format, chunk_rows), config, quarantine, staging)
    except ReadError as exc:
        raise EtlError(f"cannot read the raw snapshot {raw_data_path} as {raw_format}: {exc}") from exc


def etl_threads(config: PipelineConfig) -> int:
    """The threads ``etl_threads`` asks for (0: one per CPU core)."""
    return config.etl_threads or os.cpu_count() or 1


def top_reasons(counts: dict[str, int]) -> dict[str, int]:
    """``reasons.value_counts().head(50).to_dict()`` from counts in first-seen order."""
    if not counts:
        return {}
    ordered = pd.Series(list(counts.values()), index=list(counts)).sort_values(ascending=False)
    return {str(k): int(v) for k, v in ordered.head(_QUARANTINE_TOP_REASONS).items()}


def _pass_one(
    chunks: Iterator[pa.Table],
    config: PipelineConfig,
    quarantine: Path,
    staging: Path,
    tokens_are_missing: bool = False,
) -> tuple[PassOne, set[str]]:
    """``tokens_are_missing``: the reader read the missing-value tokens as missing (see :func:`.coerce.as_text`)."""
    schema = config.dataset_schema
    state = PassOne()
    writer: StagingWriter | None = None
    present: set[str] = set()
    threads = etl_threads(config)
    with open(quarantine, "w", newline="", encoding="utf-8") as out, ThreadPoolExecutor(threads) as pool:
        try:
            for chunk in read_ahead(chunks) if threads > 1 else chunks:
                if writer is None:  # the first chunk fixes the columns
                    state.columns = chunk.column_names
                    check_columns(state.columns, schema)
                    present = set(state.columns)
                    _write_quarantine_header(out, state.columns)
                    writer = _open_staging(staging, schema, present)
                _chunk_pass_one(chunk, config, state, out, writer, pool, tokens_are_missing)
        finally:
            if writer is not None:
                writer.close()
    return state, present


def _open_staging(staging: Path, schema: DatasetSchema, present: set[str]) -> StagingWriter:
    fields = [pa.field(schema.id_column, pa.string())] if schema.id_column and schema.id_column in present else []
    fields += [pa.field(c.name, STAGED_TYPES[c.type]) for c in schema.resolved_columns() if c.name in present]
    fields.append(pa.field(schema.target, pa.string()))  # as text: the task decides its type after pass 1
    return StagingWriter(staging, pa.schema(fields))


def _write_quarantine_header(out: TextIO, columns: list[str]) -> None:
    pd.DataFrame(columns=[*columns, "_row_number", "_reason"]).to_csv(out, index=False)


def _chunk_pass_one(
    chunk: pa.Table,
    config: PipelineConfig,
    state: PassOne,
    out: TextIO,
    writer: Any,
    pool: Executor,
    tokens_are_missing: bool,
) -> None:
    if chunk.num_rows == 0:
        return
    schema = config.dataset_schema
    start = state.rows_in
    state.rows_in += chunk.num_rows
    raw = {name: chunk.column(name).combine_chunks() for name in chunk.column_names}
    used = [name for name in (schema.id_column, schema.target, *schema.feature_names) if name and name in raw]
    # The columns are independent: typed side by side (Arrow's kernels and numpy release the GIL).
    lengths = pool.submit(check_lengths, raw, used, config.max_cell_chars)
    target_job = pool.submit(_target_chunk, raw[schema.target], schema.target, config.task, tokens_are_missing)
    # An optional column the source does not have is all missing: nothing to type or check.
    specs = [spec for spec in schema.resolved_columns() if spec.name in raw]
    columns = pool.map(lambda spec: coerce_column(raw[spec.name], spec, tokens_are_missing), specs)
    typed = dict(zip([spec.name for spec in specs], columns, strict=True))
    too_long, (target, numbers) = lengths.result(), target_job.result()
    checked = [too_long, target, *typed.values()]
    bad = np.stack([c.codes for c in checked]).any(axis=0)
    # The bad rows go to the quarantine on a pool thread while this one stages the clean rows (with one thread,
    # one after the other); each updates its own fields of the state.
    quarantined = pool.submit(_quarantine_bad_rows, chunk, checked, bad, start, out, state, config)
    if etl_threads(config) == 1:
        quarantined.result()
    good = ~bad
    for name, column in typed.items():
        state.missing_counts[name] = state.missing_counts.get(name, 0) + int((missing(column) & good).sum())
    clean_target = target.values.filter(pa.array(good))
    state.hashes.append(_stage_clean_rows(raw, typed, good, schema, clean_target, writer, tokens_are_missing))
    state.target.add(clean_target, numbers[good])
    quarantined.result()


def _quarantine_bad_rows(
    chunk: pa.Table,
    checked: list[Typed],
    bad: np.ndarray,
    start: int,
    out: TextIO,
    state: PassOne,
    config: PipelineConfig,
) -> None:
    """Append the chunk's ``bad`` rows with their reason to the quarantine (up to ``max_quarantine_rows`` in all;
    the rest are counted)."""
    if not bad.any():
        return
    codes = np.stack([c.codes for c in checked])
    # A row's reason is the first failing check's (lengths, then the target, then the columns in order): number
    # all reasons of the chunk globally.
    first = np.argmax(codes[:, bad] != 0, axis=0)
    offsets = np.cumsum([0] + [len(c.reasons) for c in checked])
    all_reasons = np.array([r for c in checked for r in c.reasons], dtype=object)
    reasons = all_reasons[offsets[first] + codes[first, np.flatnonzero(bad)] - 1]
    rows = np.flatnonzero(bad)[: max(0, config.max_quarantine_rows - state.rows_quarantine_written)]
    if len(rows):
        quarantined = _cut_long_values(chunk.take(pa.array(rows))).to_pandas().astype("string")
        quarantined = quarantined.assign(_row_number=start + rows + 1)
        quarantined["_reason"] = pd.array(reasons[: len(rows)], dtype="string")
        quarantined.to_csv(out, header=False, index=False)
        state.rows_quarantine_written += len(rows)
    state.rows_bad += int(bad.sum())
    _merge_counts(state.reason_counts, _first_seen_counts(reasons))


def _cut_long_values(rows: pa.Table) -> pa.Table:
    """Values longer than ``QUARANTINE_CELL_CHARS`` cut to that length and marked."""
    columns = []
    for column in rows.columns:
        too_long = pc.greater(pc.utf8_length(column), QUARANTINE_CELL_CHARS)
        if pc.any(too_long).as_py():
            cut = pc.binary_join_element_wise(pc.utf8_slice_codeunits(column, 0, QUARANTINE_CELL_CHARS), _CUT_MARK, "")
            column = pc.if_else(too_long, cut, column)
        columns.append(column)
    return pa.table(columns, names=rows.column_names)


def _stage_clean_rows(
    raw: dict[str, pa.Array],
    typed: dict[str, Typed],
    good: np.ndarray,
    schema: DatasetSchema,
    target: pa.Array,
    writer: Any,
    tokens_are_missing: bool,
) -> np.ndarray:
    """Write the chunk's clean rows to the staging file; returns their row hashes (the target is hashed once the
    task says what its values are)."""
    keep = pa.array(good)
    staged: dict[str, pa.Array] = {}
    if schema.id_column and schema.id_column in raw:
        staged[schema.id_column] = as_text(raw[schema.id_column], tokens_are_missing).filter(keep)
    for spec in schema.resolved_columns():
        if spec.name in typed:
            staged[spec.name] = typed[spec.name].values.filter(keep)
    row_hash = hash_rows(staged, int(good.sum()))
    staged[schema.target] = target
    if len(row_hash):
        writer.write_table(pa.table(staged, schema=writer.schema))
    return row_hash


def _target_chunk(raw: pa.Array, target: str, task: str, tokens_are_missing: bool) -> tuple[Typed, np.ndarray]:
    """The target as text with its reason codes (a missing one; for a regression also one that is not a finite
    number: an ``auto`` task with such values is a classification), and its values as numbers (NaN: not one)."""
    text = as_text(raw, tokens_are_missing)
    present = text.is_valid().to_numpy(zero_copy_only=False)
    numbers = parse_numbers(text)
    codes = np.where(present, 0, 1).astype(np.uint8)
    reasons = [f"{target}: missing target"]
    if task == "regression":
        flag(codes, reasons, np.isnan(numbers), f"{target}: not a number")
        flag(codes, reasons, np.isinf(numbers), f"{target}: not a finite number")
    return Typed(text, codes, reasons), numbers


def _first_seen_counts(values: np.ndarray) -> dict[Any, int]:
    """Value -> count, in order of first appearance (the order pandas' value_counts starts from)."""
    counts = pd.Series(values).value_counts(sort=False, dropna=True)
    return dict(zip(counts.index.tolist(), counts.to_numpy().tolist(), strict=True))


def _merge_counts(total: dict[Any, int], more: dict[Any, int]) -> None:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count
