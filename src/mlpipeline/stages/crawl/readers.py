"""Reading raw snapshots (also used by the ETL stage): every column as text, so the ETL does all the typing.

Also the checks the crawl runs on a freshly stored body: :func:`count_rows` parses all of it (a corrupt body fails
the crawl, not the ETL) and :func:`quick_schema` records the columns in the manifest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mlpipeline.stages.crawl.result import RAW_FORMATS

log = logging.getLogger(__name__)

_SCHEMA_SAMPLE_ROWS = 1000
_COUNT_CHUNK_ROWS = 200_000
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_JSON_BLOCK = 16 << 20  # Arrow's JSON block; its first block fixes the column types of the fast path


def _text_value(value: Any) -> Any:
    """One JSON value as the text a CSV would hold (NaN when missing)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _as_text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as object dtype holding ``str`` values, missing as NaN (what ``read_csv(dtype=str)`` gives)."""
    out = {}
    for name in frame.columns:
        column = frame[name]
        missing = column.isna().to_numpy()
        if pd.api.types.is_bool_dtype(column.dtype):
            text = column.map({True: "true", False: "false"}).astype(object)
        elif pd.api.types.is_integer_dtype(column.dtype):
            text = column.astype(str).astype(object)
        elif pd.api.types.is_float_dtype(column.dtype):
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[~missing]
            if finite.size and np.all(np.isfinite(finite)) and np.all(finite == np.round(finite)):
                # JSON ints in a column with nulls arrive as floats; print them back as ints ("34", not "34.0").
                text = pd.Series(np.where(missing, 0, values).astype(np.int64), index=column.index).astype(str)
            else:
                text = column.astype(str)
            text = text.astype(object)
        elif pd.api.types.infer_dtype(column, skipna=True) in ("string", "empty"):
            text = column.astype(object)
        else:  # mixed numbers/text/bools from JSON
            text = column.map(_text_value).astype(object)
        text[missing] = np.nan
        out[name] = text
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def _arrow_to_text_frame(table: pa.Table) -> pd.DataFrame:
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            try:
                column = pc.cast(column, pa.string())
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested or binary values: text via Python
                column = pa.array([_text_value(v) for v in column.to_pylist()], pa.string(), from_pandas=True)
        columns[name] = column
    frame = pa.table(columns).to_pandas(types_mapper=None, strings_to_categorical=False)
    return frame.astype(object).where(frame.notna(), np.nan)


def _json_parse_options(forced: dict[str, pa.DataType]) -> pa_json.ParseOptions:
    schema = pa.schema(list(forced.items())) if forced else None
    return pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")


def _temporal_as_text(schema: pa.Schema) -> dict[str, pa.DataType]:
    # Arrow turns ISO-looking strings into timestamps ("2024-05-20" -> "2024-05-20 00:00:00" as text); the ETL
    # must see the source text, so such columns are re-read as strings.
    return {f.name: pa.string() for f in schema if pa.types.is_temporal(f.type)}


def _read_jsonl_arrow(path: Path) -> pa.Table:
    """Fast path (multithreaded C++); raises an Arrow error when a column mixes JSON types."""
    forced: dict[str, pa.DataType] = {}
    for _ in range(3):
        read = pa_json.ReadOptions(block_size=_JSON_BLOCK)
        table = pa_json.read_json(path, read_options=read, parse_options=_json_parse_options(forced))
        extra = {k: v for k, v in _temporal_as_text(table.schema).items() if k not in forced}
        if not extra:
            return table
        forced.update(extra)
    raise pa.ArrowInvalid("JSON column types did not settle")


def _jsonl_tables(path: Path) -> Iterator[pa.Table]:
    """Streaming fast path; the schema is fixed by the first block, later type conflicts raise Arrow errors."""
    read = pa_json.ReadOptions(block_size=_JSON_BLOCK)
    with pa_json.open_json(path, read_options=read) as probe:
        forced = _temporal_as_text(probe.schema)
    with pa_json.open_json(path, read_options=read, parse_options=_json_parse_options(forced)) as reader:
        for batch in reader:
            yield pa.Table.from_batches([batch])


def rechunk(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Re-slice a stream of tables into tables of exactly ``rows`` rows (the last one may be shorter)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows:
            combined = pa.concat_tables(pending)
            yield combined.slice(0, rows)
            pending, count = [combined.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(pending)


def _indexed(frame: pd.DataFrame, start: int) -> pd.DataFrame:
    frame.index = pd.RangeIndex(start, start + len(frame))
    return frame


def _iter_jsonl(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    done = 0
    try:
        for table in rechunk(_jsonl_tables(path), chunk_rows):
            frame = _indexed(_arrow_to_text_frame(table), done)
            done += len(frame)
            yield frame
        return
    except _ARROW_ERRORS as exc:  # mixed JSON types in a column (or invalid JSON): let pandas decide
        log.debug("arrow could not read %s (%s); reading it with pandas", path, exc)
    with pd.read_json(
        path, lines=True, dtype=False, convert_dates=False, convert_axes=False, chunksize=chunk_rows
    ) as reader:
        seen = 0
        for chunk in reader:
            skip = max(0, done - seen)  # rows already delivered by the fast path
            seen += len(chunk)
            if skip < len(chunk):
                yield _indexed(_as_text_frame(chunk.iloc[skip:]), seen - len(chunk) + skip)


def iter_raw(data_path: str | os.PathLike[str], format: str, chunk_rows: int = 100_000) -> Iterator[pd.DataFrame]:
    """Read a raw snapshot in chunks of ``chunk_rows`` rows (see :func:`read_raw` for the typing)."""
    path = Path(data_path)
    if format == "csv":
        with pd.read_csv(path, dtype=str, keep_default_na=True, chunksize=chunk_rows) as reader:
            yield from reader
    elif format == "jsonl":
        yield from _iter_jsonl(path, chunk_rows)
    elif format == "parquet":
        parquet = pq.ParquetFile(path)
        done = 0
        for table in rechunk((pa.Table.from_batches([b]) for b in parquet.iter_batches(chunk_rows)), chunk_rows):
            yield _indexed(_arrow_to_text_frame(table), done)
            done += table.num_rows
    else:
        raise ValueError(f"unknown raw format {format!r}; expected one of {', '.join(RAW_FORMATS)}")


def read_raw(data_path: str | os.PathLike[str], format: str) -> pd.DataFrame:
    """Load a raw snapshot file with every column as text, so the ETL does all the typing.

    The columns are object dtype holding ``str`` or NaN, whatever the format:

    * csv: ``pandas.read_csv(dtype=str, keep_default_na=True)``: cells are the file's text; blank, "NA", "n/a",
      "null", ... are NaN.
    * jsonl: JSON values turned back into text: strings as they are, numbers as written ("34", "65.3"),
      booleans "true"/"false", nested values as JSON, null as NaN. Read with pyarrow, or with pandas when a
      column mixes JSON types.
    * parquet: read with pyarrow, each column cast to text.
    """
    path = Path(data_path)
    if format == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    if format == "jsonl":
        try:
            return _arrow_to_text_frame(_read_jsonl_arrow(path))
        except _ARROW_ERRORS as exc:
            log.debug("arrow could not read %s (%s); reading it with pandas", path, exc)
        frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False, convert_axes=False)
        return _as_text_frame(frame)
    if format == "parquet":
        return _arrow_to_text_frame(pq.read_table(path))
    raise ValueError(f"unknown raw format {format!r}; expected one of {', '.join(RAW_FORMATS)}")


def count_rows(path: Path, fmt: str) -> int:
    """Rows of a snapshot, by parsing all of it (so a corrupt body fails here, not in the ETL)."""
    if fmt == "csv":
        with pd.read_csv(path, dtype=str, keep_default_na=True, chunksize=_COUNT_CHUNK_ROWS) as reader:
            return sum(len(chunk) for chunk in reader)
    if fmt == "parquet":
        return sum(batch.num_rows for batch in pq.ParquetFile(path).iter_batches(_COUNT_CHUNK_ROWS))
    try:  # jsonl: no need to build text frames just to count
        return sum(table.num_rows for table in _jsonl_tables(path))
    except _ARROW_ERRORS:
        return sum(len(chunk) for chunk in iter_raw(path, fmt, chunk_rows=_COUNT_CHUNK_ROWS))


def quick_schema(path: Path, fmt: str) -> dict[str, str]:
    """Column -> dtype as a reader would infer it from the first rows (informational)."""
    if fmt == "parquet":
        return {f.name: str(f.type) for f in pq.read_schema(path)}
    if fmt == "csv":
        sample = pd.read_csv(path, nrows=_SCHEMA_SAMPLE_ROWS)
    else:
        sample = pd.read_json(path, lines=True, nrows=_SCHEMA_SAMPLE_ROWS, convert_dates=False)
    return {str(name): str(dtype) for name, dtype in sample.dtypes.items()}
