"""ETL stage: validate a raw snapshot against the declared schema, quarantine bad rows, clean, impute,
dedupe, engineer features, and write Parquet plus a data profile under ``data/processed/<run>/``.

The snapshot is processed in chunks of ``config.etl_chunk_rows`` rows, so memory stays bounded as the data grows
(a few bytes per row are kept: a 64-bit row hash and the target bits):

1. Pass 1 over the raw chunks: type every column (Arrow compute, with pandas for the rare values the fast paths
   do not cover), append bad rows with their reason to ``quarantine.csv``, write the clean rows to a staging
   Parquet file, and hash each clean row.
2. Dedupe over the whole dataset: a row is kept if no earlier clean row has the same hash.
3. Imputation statistics over the whole deduplicated dataset, one staged column at a time.
4. Pass 2 over the staged row groups: drop duplicates, impute, final types, date parts -> ``features.parquet``.
5. The profile, one output column at a time.

The result does not depend on the chunk size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlpipeline.config import ColumnSpec, DatasetSchema, PipelineConfig
from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.features import add_date_parts
from mlpipeline.stages.crawl import iter_raw, rechunk
from mlpipeline.storage import DataLayout, atomic_directory, read_json, sha256_file

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.csv"
PROFILE_FILE = "profile.json"
RECORD_FILE = "etl.json"
TARGET_LABEL_COLUMN = "_target_label"
_STAGING_FILE = ".staging.parquet"
_OUTPUT_ROW_GROUP = 1024 * 1024  # pyarrow's default row group length, which DataFrame.to_parquet uses

# Blank-ish values sources use for "nothing"; they count as missing after stripping.
_MISSING_TOKENS = pa.array(["", "nan", "NaN", "None", "null", "NULL", "NA", "<NA>"])
# What Python's str.strip() removes (every character whose isspace() is true); a test checks the list.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# pandas.read_csv's default NA strings: the Arrow CSV reader must see the same cells as missing.
_PANDAS_NA_STRINGS = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]
# Texts both Arrow and pandas turn into the same float: plain decimals of at most 15 digits are parsed exactly
# (one correctly rounded operation) by both; anything else goes to pandas.to_numeric.
_FAST_NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"
_FAST_NUMBER_MAX_CHARS = 15
_FAST_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_FAST_DATE_YEARS = (1678, 2261)  # inside datetime64[ns]; other years go to pandas
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_MAX_DISTINCT_LABELS = 10_000  # a target with more distinct values is refused without listing them all
_HASHED_STRING_MAX_BYTES = 64  # longer strings are hashed by pandas

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_NULL_HASH = _U64(0x5BD1E9955BD1E995)
_ARROW_TO_PANDAS_DTYPE = {"string": "object", "large_string": "object", "bool": "bool", "double": "float64"}


class EtlError(RuntimeError):
    """The data cannot be turned into a training set; the message says why and where to look."""


@dataclass(frozen=True)
class EtlResult:
    processed_dir: str
    data_path: str
    quarantine_path: str
    profile_path: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    duplicates_dropped: int
    bad_row_fraction: float
    data_sha256: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------
# Reading the raw snapshot as chunks of Arrow text columns
# ------------------------------------------------------------------------------------------------------------


class _ReadError(Exception):
    """The raw snapshot could not be read (wraps the reader's own exception)."""


class _FastReaderGaveUp(Exception):
    """The Arrow CSV reader cannot read this file the way pandas does; read it with pandas instead."""


def _arrow_csv_chunks(path: str, chunk_rows: int) -> Iterator[pa.Table]:
    """The CSV as ``read_csv(dtype=str)`` sees it, parsed by Arrow's C++ reader (several times faster)."""
    try:
        with pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 20)) as probe:
            names = probe.schema.names
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _FastReaderGaveUp(str(exc)) from exc
    if len(set(names)) != len(names) or "" in names:
        raise _FastReaderGaveUp("duplicate or blank column names (pandas renames them)")
    options = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        null_values=_PANDAS_NA_STRINGS,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    parse = pa_csv.ParseOptions(newlines_in_values=True)
    read = pa_csv.ReadOptions(block_size=8 << 20)

    def batches() -> Iterator[pa.Table]:
        try:
            with pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=options) as reader:
                for batch in reader:
                    yield pa.Table.from_batches([batch])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # ragged rows, bad quoting, ...
            raise _FastReaderGaveUp(str(exc)) from exc

    empty = True
    for table in rechunk(batches(), chunk_rows):
        empty = False
        yield table
    if empty:  # a header without rows: the columns are still checked
        yield pa.table({name: pa.array([], pa.string()) for name in names})


def _pandas_chunks(path: str, fmt: str, chunk_rows: int) -> Iterator[pa.Table]:
    """The snapshot through :func:`mlpipeline.stages.crawl.iter_raw` (the reference reader), as Arrow text columns."""
    columns: list[str] | None = None
    try:
        for frame in iter_raw(path, fmt, chunk_rows):
            if columns is None:
                columns = [str(name) for name in frame.columns]
            frame = frame.reindex(columns=columns)
            yield pa.table(
                {
                    name: pa.array(frame[name].to_numpy(dtype=object), type=pa.string(), from_pandas=True)
                    for name in columns
                }
            )
    except Exception as exc:
        raise _ReadError(str(exc)) from exc


# ------------------------------------------------------------------------------------------------------------
# Typing one column
# ------------------------------------------------------------------------------------------------------------


def _as_text(column: pa.Array) -> pa.Array:
    """Raw values as stripped strings, with blanks as missing (sources disagree on how to say 'nothing')."""
    text = pc.utf8_trim(column, characters=PYTHON_WHITESPACE)
    return pc.if_else(pc.is_in(text, value_set=_MISSING_TOKENS), pa.scalar(None, pa.string()), text)


def _mask(condition: pa.Array) -> np.ndarray:
    return pc.fill_null(condition, False).to_numpy(zero_copy_only=False)


def _parse_numbers(text: pa.Array) -> np.ndarray:
    """``pd.to_numeric(text, errors="coerce")`` as float64: Arrow for plain decimals, pandas for the rest."""
    values = np.full(len(text), np.nan)
    fast = _mask(
        pc.and_(
            pc.match_substring_regex(text, _FAST_NUMBER),
            pc.less_equal(pc.utf8_length(text), _FAST_NUMBER_MAX_CHARS),
        )
    )
    if fast.any():
        values[fast] = pc.cast(text.filter(pa.array(fast)), pa.float64()).to_numpy()
    slow = ~fast & text.is_valid().to_numpy(zero_copy_only=False)
    if slow.any():
        strings = pd.Series(text.filter(pa.array(slow)).to_pylist(), dtype="string")
        values[slow] = pd.to_numeric(strings, errors="coerce").astype("float64").to_numpy()
    return values


def _parse_dates(text: pa.Array) -> np.ndarray:
    """``pd.to_datetime(text, errors="coerce", format="ISO8601")`` as naive datetime64[ns]; plain
    ``YYYY-MM-DD`` dates are decoded with numpy, everything else by pandas."""
    values = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
    fast = _mask(pc.match_substring_regex(text, _FAST_DATE))
    if fast.any():
        plain = text.filter(pa.array(fast))
        start = int(np.frombuffer(plain.buffers()[1], np.int32, count=1, offset=plain.offset * 4)[0])
        digits = np.frombuffer(plain.buffers()[2], np.uint8)[start : start + 10 * len(plain)].reshape(-1, 10)
        digits = digits.astype(np.int64) - ord("0")
        year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
        month = digits[:, 5] * 10 + digits[:, 6]
        day = digits[:, 8] * 10 + digits[:, 9]
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        month_days = _DAYS_IN_MONTH[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
        valid = (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
        valid &= (year >= _FAST_DATE_YEARS[0]) & (year <= _FAST_DATE_YEARS[1])
        months = ((year - 1970) * 12 + month - 1).astype("datetime64[M]")
        dates = months.astype("datetime64[D]") + (day - 1).astype("timedelta64[D]")
        rows = np.flatnonzero(fast)
        values[rows[valid]] = dates[valid].astype("datetime64[ns]")
        fast[rows[~valid]] = False  # impossible dates: pandas decides (it says NaT)
    slow = ~fast & text.is_valid().to_numpy(zero_copy_only=False)
    if slow.any():
        strings = pd.Series(text.filter(pa.array(slow)).to_pylist(), dtype="string")
        parsed = pd.to_datetime(strings, errors="coerce", format="ISO8601")
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert(None)
        values[slow] = parsed.to_numpy(dtype="datetime64[ns]")
    return values


@dataclass
class _Typed:
    """One declared column of a chunk, typed, plus why each row is bad (0 = fine, k = ``reasons[k - 1]``)."""

    values: pa.Array
    codes: np.ndarray
    reasons: list[str]


def _flag(codes: np.ndarray, reasons: list[str], where: np.ndarray, reason: str) -> None:
    """Give rows that have no reason yet this one (the first failing check wins)."""
    reasons.append(reason)
    codes[where & (codes == 0)] = len(reasons)


def _coerce_column(raw: pa.Array, spec: ColumnSpec) -> _Typed:
    text = _as_text(raw)
    present = text.is_valid().to_numpy(zero_copy_only=False)
    codes = np.zeros(len(text), dtype=np.uint8)
    reasons: list[str] = []

    if spec.type in ("numeric", "integer"):
        numbers = _parse_numbers(text)
        finite_or_inf = ~np.isnan(numbers)
        _flag(codes, reasons, present & ~finite_or_inf, f"{spec.name}: not a number")
        with np.errstate(invalid="ignore"):
            if spec.type == "integer":
                _flag(codes, reasons, finite_or_inf & (numbers % 1 != 0), f"{spec.name}: not an integer")
            if spec.min is not None:
                _flag(codes, reasons, numbers < spec.min, f"{spec.name}: below minimum {spec.min:g}")
            if spec.max is not None:
                _flag(codes, reasons, numbers > spec.max, f"{spec.name}: above maximum {spec.max:g}")
        values: pa.Array = pa.array(numbers)
    elif spec.type == "categorical":
        values = text
        if spec.categories is not None:
            known = _mask(pc.is_in(text, value_set=pa.array(spec.categories, pa.string())))
            _flag(codes, reasons, present & ~known, f"{spec.name}: unknown category")
    elif spec.type == "boolean":
        lowered = pc.utf8_lower(text)
        is_true = _mask(pc.is_in(lowered, value_set=pa.array(sorted(TRUE_TOKENS))))
        is_false = _mask(pc.is_in(lowered, value_set=pa.array(sorted(FALSE_TOKENS))))
        values = pa.array(is_true, mask=~(is_true | is_false))
        _flag(codes, reasons, present & ~(is_true | is_false), f"{spec.name}: not a boolean")
    elif spec.type == "date":
        dates = _parse_dates(text)
        values = pa.array(dates, mask=np.isnat(dates))
        _flag(codes, reasons, present & np.isnat(dates), f"{spec.name}: not an ISO date")
    else:  # pragma: no cover - the config type forbids other values
        raise EtlError(f"unsupported column type {spec.type!r}")

    if not spec.nullable:
        _flag(codes, reasons, ~present, f"{spec.name}: missing value")
    return _Typed(values, codes, reasons)


def _check_columns(available: list[str], schema: DatasetSchema) -> None:
    missing = [schema.target] if schema.target not in available else []
    missing += [c.name for c in schema.columns if c.required and c.name not in available]
    if missing:
        raise EtlError(
            f"the source is missing required column(s) {missing}; it has {sorted(available)}. "
            "Fix the source or the dataset_schema setting."
        )


# ------------------------------------------------------------------------------------------------------------
# Row hashes (for the dedupe across chunks)
# ------------------------------------------------------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64 arithmetic wraps)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _hash_strings(text: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string's bytes (one value always gets one hash, whatever the chunk)."""
    encoded = pc.dictionary_encode(text)
    if len(encoded.dictionary) * 4 < len(text):  # few distinct values (categories): hash each value once
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        hashes = _hash_distinct_strings(encoded.dictionary)[np.nan_to_num(indices, nan=0).astype(np.int64)]
        hashes[~text.is_valid().to_numpy(zero_copy_only=False)] = _NULL_HASH
        return hashes
    return _hash_distinct_strings(text)


def _hash_distinct_strings(text: pa.Array) -> np.ndarray:
    count = len(text)
    hashes = np.full(count, _NULL_HASH, dtype=_U64)
    if count == 0:
        return hashes
    buffers = text.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, count=count + 1, offset=text.offset * 4).astype(np.int64)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None and buffers[2].size else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    valid = text.is_valid().to_numpy(zero_copy_only=False)
    short = valid & (lengths <= _HASHED_STRING_MAX_BYTES)
    if short.any():
        # The bytes as a zero-padded matrix, read eight at a time as integers: vectorised, no Python strings.
        width = max(8, -(-int(lengths[short].max()) // 8) * 8)
        span = np.arange(width)
        positions = np.minimum(offsets[:-1][short, None] + span, data.size - 1)
        matrix = np.where(span < lengths[short, None], data[positions], 0).astype(np.uint8)
        words = np.ascontiguousarray(matrix).view(_U64)
        combined = _mix(lengths[short].astype(_U64) + _GOLDEN)
        for column in range(words.shape[1]):
            combined = _mix(combined ^ _mix(words[:, column] + _U64(column)))
        hashes[short] = combined
    long = valid & ~short
    if long.any():
        strings = np.array(text.filter(pa.array(long)).to_pylist(), dtype=object)
        hashes[long] = _mix(pd.util.hash_array(strings, categorize=False) ^ _GOLDEN)
    return hashes


def _hash_values(values: pa.Array, spec_type: str) -> np.ndarray:
    if spec_type in ("numeric", "integer"):
        numbers = values.to_numpy(zero_copy_only=False) + 0.0  # -0.0 -> 0.0: equal values, equal hashes
        numbers[np.isnan(numbers)] = np.nan  # one NaN bit pattern
        return _mix(numbers.view(_U64))
    if spec_type == "boolean":
        codes = pc.fill_null(pc.cast(values, pa.int8()), 2).to_numpy(zero_copy_only=False)
        return _mix(codes.astype(_U64) + _GOLDEN)
    if spec_type == "date":
        return _mix(pc.fill_null(pc.cast(values, pa.int64()), np.iinfo(np.int64).min).to_numpy().view(_U64))
    return _hash_strings(values)


# ------------------------------------------------------------------------------------------------------------
# Pass 1: type, quarantine, stage the clean rows, hash them
# ------------------------------------------------------------------------------------------------------------


def _first_seen_counts(values: np.ndarray) -> dict[Any, int]:
    """Value -> count, in order of first appearance (the order pandas' value_counts starts from)."""
    counts = pd.Series(values).value_counts(sort=False, dropna=True)
    return dict(zip(counts.index.tolist(), counts.to_numpy().tolist(), strict=True))


def _merge_counts(total: dict[Any, int], more: dict[Any, int]) -> None:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count


@dataclass
class _PassOne:
    """What pass 1 learned about the whole snapshot."""

    columns: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_bad: int = 0
    reason_counts: dict[str, int] = field(default_factory=dict)
    hashes: list[np.ndarray] = field(default_factory=list)
    positive_if_numeric: list[np.ndarray] = field(default_factory=list)
    positive_if_text: list[np.ndarray] = field(default_factory=list)
    target_all_numeric: bool = True
    numeric_labels: dict[float, None] = field(default_factory=dict)
    text_labels: dict[str, None] = field(default_factory=dict)


_STAGED_TYPES: dict[str, pa.DataType] = {
    "numeric": pa.float64(),
    "integer": pa.float64(),
    "categorical": pa.string(),
    "boolean": pa.bool_(),
    "date": pa.timestamp("ns"),
}


def _staging_schema(schema: DatasetSchema, present: set[str]) -> pa.Schema:
    fields = [pa.field(schema.id_column, pa.string())] if schema.id_column and schema.id_column in present else []
    fields += [pa.field(c.name, _STAGED_TYPES[c.type]) for c in schema.columns if c.name in present]
    return pa.schema(fields)


def _remember_labels(labels: dict[Any, None], values: np.ndarray) -> None:
    if len(labels) <= _MAX_DISTINCT_LABELS:
        for value in pd.unique(values)[: _MAX_DISTINCT_LABELS + 1]:
            labels.setdefault(value, None)


def _target_chunk(raw: pa.Array, schema: DatasetSchema, state: _PassOne) -> tuple[_Typed, np.ndarray, np.ndarray]:
    """The target's reason codes, plus whether each row is positive when labels compare as numbers / as text."""
    text = _as_text(raw)
    present = text.is_valid().to_numpy(zero_copy_only=False)
    numbers = _parse_numbers(text)
    numeric = ~np.isnan(numbers)
    state.target_all_numeric &= bool(numeric[present].all())
    _remember_labels(state.numeric_labels, numbers[numeric])
    if len(state.text_labels) <= _MAX_DISTINCT_LABELS:
        for label in pc.unique(text.drop_null()).to_pylist()[: _MAX_DISTINCT_LABELS + 1]:
            state.text_labels.setdefault(label, None)
    positive_number = pd.to_numeric(pd.Series([schema.positive_label]), errors="coerce").iloc[0]
    positive_if_numeric = numbers == positive_number
    positive_if_text = _mask(pc.equal(text, schema.positive_label))
    codes = np.where(present, 0, 1).astype(np.uint8)
    return _Typed(text, codes, [f"{schema.target}: missing target"]), positive_if_numeric, positive_if_text


def _pass_one(
    chunks: Iterator[pa.Table], schema: DatasetSchema, quarantine: Path, staging: Path
) -> tuple[_PassOne, set[str]]:
    state = _PassOne()
    writer: pq.ParquetWriter | None = None
    present: set[str] = set()
    with open(quarantine, "w", newline="", encoding="utf-8") as out:
        try:
            for chunk in chunks:
                if writer is None:
                    state.columns = chunk.column_names
                    _check_columns(state.columns, schema)
                    present = set(state.columns)
                    _write_quarantine_header(out, state.columns)
                    writer = pq.ParquetWriter(
                        staging,
                        _staging_schema(schema, present),
                        compression="none",
                        use_dictionary=False,
                        write_statistics=False,
                    )
                _chunk_pass_one(chunk, schema, state, out, writer)
        finally:
            if writer is not None:
                writer.close()
    return state, present


def _write_quarantine_header(out: TextIO, columns: list[str]) -> None:
    pd.DataFrame(columns=[*columns, "_row_number", "_reason"]).to_csv(out, index=False)


def _chunk_pass_one(chunk: pa.Table, schema: DatasetSchema, state: _PassOne, out: TextIO, writer: Any) -> None:
    if chunk.num_rows == 0:
        return
    start = state.rows_in
    state.rows_in += chunk.num_rows
    raw = {name: chunk.column(name).combine_chunks() for name in chunk.column_names}
    target, positive_if_numeric, positive_if_text = _target_chunk(raw[schema.target], schema, state)
    checked = [target]
    typed: dict[str, _Typed] = {}
    for spec in schema.columns:
        if spec.name in raw:  # an optional column the source does not have is all missing
            typed[spec.name] = _coerce_column(raw[spec.name], spec)
            checked.append(typed[spec.name])

    # A row's reason is the first failing column's, target first: number all reasons of the chunk globally.
    codes = np.stack([c.codes for c in checked])
    bad = codes.any(axis=0)
    good = ~bad
    if bad.any():
        first = np.argmax(codes[:, bad] != 0, axis=0)
        offsets = np.cumsum([0] + [len(c.reasons) for c in checked])
        all_reasons = np.array([r for c in checked for r in c.reasons], dtype=object)
        reasons = all_reasons[offsets[first] + codes[first, np.flatnonzero(bad)] - 1]
        quarantined = chunk.filter(pa.array(bad)).to_pandas().astype("string")
        quarantined = quarantined.assign(_row_number=start + np.flatnonzero(bad) + 1)
        quarantined["_reason"] = pd.array(reasons, dtype="string")
        quarantined.to_csv(out, header=False, index=False)
        state.rows_bad += int(bad.sum())
        _merge_counts(state.reason_counts, _first_seen_counts(reasons))

    keep = pa.array(good)
    staged: dict[str, pa.Array] = {}
    row_hash = np.zeros(int(good.sum()), dtype=_U64)
    if schema.id_column and schema.id_column in raw:
        staged[schema.id_column] = _as_text(raw[schema.id_column]).filter(keep)
        row_hash = _mix(row_hash * _GOLDEN + _hash_values(staged[schema.id_column], "categorical"))
    for spec in schema.columns:
        if spec.name in typed:
            staged[spec.name] = typed[spec.name].values.filter(keep)
            row_hash = _mix(row_hash * _GOLDEN + _hash_values(staged[spec.name], spec.type))
    if len(row_hash):
        writer.write_table(pa.table(staged, schema=writer.schema))
    state.hashes.append(row_hash)
    state.positive_if_numeric.append(positive_if_numeric[good])
    state.positive_if_text.append(positive_if_text[good])


# ------------------------------------------------------------------------------------------------------------
# Whole-dataset decisions: target labels, dedupe, imputation
# ------------------------------------------------------------------------------------------------------------


def _target_positive(state: _PassOne, schema: DatasetSchema) -> np.ndarray:
    """Which clean rows are positive; refuses a target that is not binary over the whole snapshot."""
    positive_number = pd.to_numeric(pd.Series([schema.positive_label]), errors="coerce").iloc[0]
    # "1" and "1.0" are the same label; compare numbers numerically when the labels are numbers.
    as_numbers = bool(pd.notna(positive_number)) and state.target_all_numeric
    distinct = list(state.numeric_labels if as_numbers else state.text_labels)
    if len(distinct) > 2:
        count = f"more than {_MAX_DISTINCT_LABELS}" if len(distinct) > _MAX_DISTINCT_LABELS else str(len(distinct))
        raise EtlError(
            f"target {schema.target!r} has {count} distinct values ({distinct[:5]}...); "
            "only binary classification is supported"
        )
    parts = state.positive_if_numeric if as_numbers else state.positive_if_text
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _first_occurrences(state: _PassOne, positive: np.ndarray) -> np.ndarray:
    """Keep-mask over the clean rows: the first of each group of identical rows (target included)."""
    hashes = np.concatenate(state.hashes) if state.hashes else np.zeros(0, dtype=_U64)
    hashes = _mix(hashes ^ (positive.astype(_U64) * _GOLDEN))
    return ~pd.Series(hashes, copy=False).duplicated(keep="first").to_numpy()


def _row_groups(staging: pq.ParquetFile) -> Iterator[tuple[int, int, int]]:
    """(row group, first staged row, row past its end)."""
    start = 0
    for group in range(staging.num_row_groups):
        rows = staging.metadata.row_group(group).num_rows
        yield group, start, start + rows
        start += rows


def _mode(counts: dict[Any, int]) -> Any:
    """pandas' ``Series.mode().iloc[0]``: the most frequent value, the smallest one on ties."""
    most = max(counts.values())
    return min(value for value, count in counts.items() if count == most)


def _fill_values(staging: pq.ParquetFile, keep: np.ndarray, schema: DatasetSchema, present: set[str]) -> dict[str, Any]:
    """What each column with missing values is filled with, over the whole deduplicated dataset."""
    fills: dict[str, Any] = {}
    rows = int(keep.sum())
    for spec in schema.columns:
        if spec.name not in present:
            fills[spec.name] = _fill_for_absent(spec) if rows else None
            if fills[spec.name] is None:
                del fills[spec.name]
            continue
        if spec.type in ("numeric", "integer", "date"):
            column = staging.read(columns=[spec.name]).column(0).to_numpy()[keep]
            missing = np.isnat(column) if spec.type == "date" else np.isnan(column)
            if not missing.any():
                continue
            if spec.type == "date":
                known = column[~missing]
                fill: Any = None
                if known.size:
                    fill = pd.Timestamp(np.partition(known, known.size // 2)[known.size // 2])
                fills[spec.name] = fill.isoformat() if fill is not None else None
                continue
            fill = float(pd.Series(column, copy=False).median()) if not missing.all() else 0.0
            fills[spec.name] = float(round(fill)) if spec.type == "integer" else fill
            continue
        counts: dict[Any, int] = {}
        any_missing = False
        for group, start, end in _row_groups(staging):
            values = staging.read_row_group(group, columns=[spec.name]).column(0).filter(pa.array(keep[start:end]))
            any_missing |= values.null_count > 0
            for item in pc.value_counts(values.drop_null()).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        if any_missing:
            fills[spec.name] = _mode(counts) if counts else ("missing" if spec.type == "categorical" else False)
    return fills


def _fill_for_absent(spec: ColumnSpec) -> Any:
    """An optional column the source lacks is all missing: the fill for an empty column."""
    return {"numeric": 0.0, "integer": 0.0, "categorical": "missing", "boolean": False}.get(spec.type)


# ------------------------------------------------------------------------------------------------------------
# Pass 2: the output
# ------------------------------------------------------------------------------------------------------------


def _output_table(
    staged: pa.Table,
    positive: np.ndarray,
    schema: DatasetSchema,
    present: set[str],
    fills: dict[str, Any],
) -> pa.Table:
    rows = staged.num_rows
    columns: dict[str, pa.Array] = {}
    if schema.id_column and schema.id_column in present:
        columns[schema.id_column] = staged.column(schema.id_column).combine_chunks()
    dates: dict[str, Any] = {}
    for spec in schema.columns:
        fill = fills.get(spec.name)
        if spec.name not in present:
            if spec.type == "date":  # stays an all-NaN float column, as pandas leaves it
                dates[spec.name] = np.full(rows, np.nan)
                columns[spec.name] = pa.array(dates[spec.name], from_pandas=True)
                continue
            values = pa.nulls(rows, _STAGED_TYPES[spec.type])
        else:
            values = staged.column(spec.name).combine_chunks()
        if spec.type in ("numeric", "integer"):
            numbers = values.to_numpy(zero_copy_only=False)
            if spec.name in fills:
                numbers = np.where(np.isnan(numbers), fill, numbers)
            columns[spec.name] = pa.array(numbers.astype(np.int64) if spec.type == "integer" else numbers)
        elif spec.type == "date":
            if fill is not None:
                values = pc.fill_null(values, pa.scalar(pd.Timestamp(fill).value, pa.timestamp("ns")))
            columns[spec.name] = values
            dates[spec.name] = values.to_numpy(zero_copy_only=False)
        elif spec.type == "boolean":
            columns[spec.name] = pc.fill_null(values, bool(fill)) if values.null_count else values
        else:
            columns[spec.name] = pc.fill_null(values, str(fill)) if values.null_count else values
    columns[schema.target] = pa.array(positive.astype(np.int64))
    if dates:
        parts = add_date_parts(pd.DataFrame(dates), list(dates))
        for name in parts.columns[len(dates) :]:
            columns[name] = pa.array(parts[name].to_numpy(), from_pandas=True)
    return pa.table(columns)


def _with_pandas_metadata(table: pa.Table) -> pa.Schema:
    """The schema ``DataFrame.to_parquet`` would write (pandas metadata included) for frames like ``table``."""
    sample = table.slice(0, 1000).to_pandas()
    pandas_schema = pa.Schema.from_pandas(sample, preserve_index=False)
    return table.schema.with_metadata(pandas_schema.metadata)


def _write_features(
    staging_path: Path,
    target: Path,
    keep: np.ndarray,
    positive: np.ndarray,
    schema: DatasetSchema,
    present: set[str],
    fills: dict[str, Any],
) -> int:
    """Write the output in row groups of ``_OUTPUT_ROW_GROUP`` rows, as ``DataFrame.to_parquet`` does: the file's
    bytes (and so ``data_sha256``) do not depend on the chunk size."""
    staging = pq.ParquetFile(staging_path)
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    buffered = rows_out = 0

    def flush(rows: int) -> None:
        nonlocal pending, buffered
        combined = pa.concat_tables(pending)
        assert writer is not None
        writer.write_table(combined.slice(0, rows).combine_chunks())
        pending, buffered = [combined.slice(rows)], buffered - rows

    try:
        for group, start, end in _row_groups(staging):
            kept = keep[start:end]
            staged = staging.read_row_group(group).filter(pa.array(kept))
            table = _output_table(staged, positive[start:end][kept], schema, present, fills)
            if writer is None:
                writer = pq.ParquetWriter(target, _with_pandas_metadata(table), compression="snappy")
            pending.append(table.replace_schema_metadata(writer.schema.metadata))
            buffered += table.num_rows
            rows_out += table.num_rows
            while buffered >= _OUTPUT_ROW_GROUP:
                flush(_OUTPUT_ROW_GROUP)
        if buffered:
            flush(buffered)
    finally:
        if writer is not None:
            writer.close()
    return rows_out


# ------------------------------------------------------------------------------------------------------------
# Profile
# ------------------------------------------------------------------------------------------------------------


def _frequencies(counts: pd.Series) -> dict[str, float]:
    """``series.astype("string").value_counts(normalize=True).head(20)`` from counts in first-seen order."""
    if counts.empty:
        return {}
    proportions = (counts.sort_values(ascending=False) / counts.sum()).head(20)
    return {str(k): round(float(v), 6) for k, v in proportions.items()}


def _column_stats(series: pd.Series, kind: str) -> dict[str, Any]:
    stats: dict[str, Any] = {"dtype": str(series.dtype), "missing": int(series.isna().sum()), "kind": kind}
    if kind == "date":
        stats.update(min=str(series.min()), max=str(series.max()))
    elif pd.api.types.is_bool_dtype(series) or kind in ("categorical", "boolean", "target"):
        counts = series.astype("string").value_counts(normalize=True).head(20)
        stats["frequencies"] = {str(k): round(float(v), 6) for k, v in counts.items()}
    elif pd.api.types.is_numeric_dtype(series):
        described = series.describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95])
        stats.update({str(k): (None if pd.isna(v) else float(v)) for k, v in described.items() if k != "count"})
    return stats


def _kind(name: str, schema: DatasetSchema) -> str:
    types = {c.name: c.type for c in schema.columns}
    return types.get(name, "target" if name == schema.target else "derived")


def profile(frame: pd.DataFrame, schema: DatasetSchema) -> dict[str, Any]:
    """Per-column statistics of a processed dataset (also the reference for drift monitoring)."""
    columns = {name: _column_stats(frame[name], _kind(name, schema)) for name in frame.columns}
    return {"rows": len(frame), "columns": columns}


def profile_parquet(path: Path, schema: DatasetSchema) -> dict[str, Any]:
    """:func:`profile` of a processed Parquet file, reading one column at a time (the same numbers)."""
    data = pq.ParquetFile(path)
    columns: dict[str, Any] = {}
    for field_ in data.schema_arrow:
        name, kind = field_.name, _kind(field_.name, schema)
        text_like = pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type)
        counted = text_like or pa.types.is_boolean(field_.type) or kind == "target"
        if not counted:  # numbers and dates: pandas on the whole column, exactly as profile() computes them
            series = data.read(columns=[name]).column(0).to_pandas()
            columns[name] = _column_stats(series, kind)
            continue
        missing = 0
        counts: dict[Any, int] = {}
        for group in range(data.num_row_groups):
            values = data.read_row_group(group, columns=[name]).column(0)
            missing += values.null_count
            if kind in ("categorical", "boolean", "target") or pa.types.is_boolean(field_.type):
                for item in pc.value_counts(values.drop_null()).to_pylist():
                    counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        dtype = _ARROW_TO_PANDAS_DTYPE.get(str(field_.type), str(field_.type))
        stats: dict[str, Any] = {"dtype": dtype, "missing": missing, "kind": kind}
        if kind in ("categorical", "boolean", "target") or pa.types.is_boolean(field_.type):
            stats["frequencies"] = _frequencies(pd.Series(list(counts.values()), index=[str(k) for k in counts]))
        columns[name] = stats
    return {"rows": data.metadata.num_rows, "columns": columns}


# ------------------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------------------


def _top_reasons(counts: dict[str, int]) -> dict[str, int]:
    """``reasons.value_counts().head(50).to_dict()`` from counts in first-seen order."""
    if not counts:
        return {}
    ordered = pd.Series(list(counts.values()), index=list(counts)).sort_values(ascending=False).head(50)
    return {str(k): int(v) for k, v in ordered.items()}


def _read_pass_one(
    raw_data_path: str, raw_format: str, chunk_rows: int, schema: DatasetSchema, tmp: Path
) -> tuple[_PassOne, set[str]]:
    quarantine, staging = tmp / QUARANTINE_FILE, tmp / _STAGING_FILE
    try:
        if raw_format == "csv":
            try:
                return _pass_one(_arrow_csv_chunks(raw_data_path, chunk_rows), schema, quarantine, staging)
            except _FastReaderGaveUp:
                pass  # pandas reads some CSVs Arrow refuses (ragged rows, renamed headers): start over with it
        return _pass_one(_pandas_chunks(raw_data_path, raw_format, chunk_rows), schema, quarantine, staging)
    except _ReadError as exc:
        raise EtlError(f"cannot read the raw snapshot {raw_data_path} as {raw_format}: {exc}") from exc


def etl(config: PipelineConfig, *, run: str, raw_data_path: str, raw_format: str) -> EtlResult:
    """Turn the raw snapshot at ``raw_data_path`` into ``data/processed/<run>/``.

    Idempotent: a completed output for this run is returned as it is.
    """
    layout = DataLayout.of(config.data_dir)
    out_dir = layout.processed(run)
    if (out_dir / RECORD_FILE).exists():
        return EtlResult(**read_json(out_dir / RECORD_FILE))

    started = time.perf_counter()
    schema = config.dataset_schema
    with atomic_directory(out_dir) as tmp:
        # The quarantine is written even when the run fails below, so the bad rows can be inspected.
        state, present = _read_pass_one(raw_data_path, raw_format, config.etl_chunk_rows, schema, tmp)
        if not state.columns:
            raise EtlError(f"cannot read the raw snapshot {raw_data_path} as {raw_format}: no columns")
        rows_in = state.rows_in
        if rows_in == 0:
            raise EtlError(f"the raw snapshot {raw_data_path} has no rows")
        positive = _target_positive(state, schema)
        bad_fraction = state.rows_bad / rows_in
        quarantine_path = tmp / QUARANTINE_FILE
        if bad_fraction > config.max_bad_row_fraction:
            kept = out_dir.parent / f"{run}.rejected-{QUARANTINE_FILE}"
            quarantine_path.replace(kept)
            raise EtlError(
                f"{state.rows_bad} of {rows_in} rows ({bad_fraction:.1%}) failed validation, more than "
                f"max_bad_row_fraction={config.max_bad_row_fraction:.1%}; the rows and reasons are in {kept}"
            )
        keep = _first_occurrences(state, positive)
        state.hashes.clear()  # the largest per-row arrays: not needed any more
        rows_clean = len(keep)
        rows_out = int(keep.sum())
        if rows_out < config.min_rows:
            raise EtlError(f"only {rows_out} clean rows remain, fewer than min_rows={config.min_rows}")

        staging_path = tmp / _STAGING_FILE
        fills = _fill_values(pq.ParquetFile(staging_path), keep, schema, present)
        _write_features(staging_path, tmp / FEATURES_FILE, keep, positive, schema, present, fills)
        staging_path.unlink()
        data_profile = profile_parquet(tmp / FEATURES_FILE, schema)
        data_profile.update(
            rows_in=rows_in,
            rows_quarantined=state.rows_bad,
            duplicates_dropped=rows_clean - rows_out,
            imputed_with=fills,
            quarantine_reasons=_top_reasons(state.reason_counts),
        )
        (tmp / PROFILE_FILE).write_text(json.dumps(data_profile, indent=2, default=str))
        final = Path(out_dir)
        result = EtlResult(
            processed_dir=str(final),
            data_path=str(final / FEATURES_FILE),
            quarantine_path=str(final / QUARANTINE_FILE),
            profile_path=str(final / PROFILE_FILE),
            rows_in=rows_in,
            rows_out=rows_out,
            rows_quarantined=state.rows_bad,
            duplicates_dropped=rows_clean - rows_out,
            bad_row_fraction=round(bad_fraction, 6),
            data_sha256=sha256_file(tmp / FEATURES_FILE),
            seconds=round(time.perf_counter() - started, 3),
        )
        (tmp / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result
