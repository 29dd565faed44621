"""Inferring a dataset's schema from a raw snapshot, and freezing it so that every run types the columns the same way.

When ``dataset_schema.columns`` is not set, the ETL calls :func:`resolve_schema`: the first run infers the feature
columns from the first rows of its snapshot (:func:`infer_schema`) and freezes them under
``<data_dir>/schemas/<key>.json`` (the key names the source, target, id column and exclusions); later runs reuse
that file, so a column's type cannot flip between runs. The file is exactly what the ``dataset_schema`` Variable
takes: paste it there to declare (and edit) the schema. ``python -m mlpipeline schema <url> --target <column>``
prints the same JSON without running the pipeline.

Each column's values are judged as the ETL will see them (stripped, its blank-ish tokens missing) and, for the type
decision only, ``?`` counts as missing too:

* integer / numeric: every value a finite number; integer when all are whole (so a 0/1 column is an integer).
* boolean: every value one of ``TRUE_TOKENS`` / ``FALSE_TOKENS`` (yes/no, true/false, y/n, t/f), both kinds present.
* date: every value parsed by the ETL's own date coercion (year first: 2012-01-31, 2012/01/31, ISO timestamps).
  Day- or month-first dates (31/01/2012, Jan 31 2012) are left out, saying so: the ETL would quarantine them.
* categorical: at most ``MAX_CATEGORIES`` distinct texts; no category list, no bounds: later values are not refused.

Left out, each with its reason (logged and returned): the target, the id column, excluded columns, empty and
constant columns, free text, columns missing in more than ``max_missing_fraction`` of the rows (the ETL would refuse
them), id-like columns (mostly unique texts; integers that count rows) and texts with too many distinct values.
The result depends only on the snapshot's first ``sample_rows`` rows: the same snapshot gives the same schema.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from mlpipeline.config import ColumnSpec, DatasetSchema, PipelineConfig
from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.stages.etl import reading
from mlpipeline.stages.etl.coerce import as_text, coerce_column, parse_numbers
from mlpipeline.stages.etl.result import EtlError
from mlpipeline.storage import DataLayout, atomic_write_json, read_json, temp_sibling

log = logging.getLogger(__name__)

SCHEMAS_DIR = "schemas"
EXCLUDED_SUFFIX = ".excluded.json"
DEFAULT_SAMPLE_ROWS = 100_000
# More distinct texts than this is not a category: the model one-hot encodes categories (a column each).
MAX_CATEGORIES = 50
# Texts with more than ID_MIN_DISTINCT values, at least this share of them distinct, name rows rather than groups.
ID_UNIQUE_SHARE = 0.5
ID_MIN_DISTINCT = 10
# Integers that go up by exactly 1 from one row to the next this often count rows (1..n, or 1..k per group).
COUNTER_STEP_SHARE = 0.95
# Sentences, not labels ("Adelie Penguin (Pygoscelis adeliae)" is a 4-word, 35-character label).
FREE_TEXT_MEAN_WORDS = 5.0
FREE_TEXT_MEAN_CHARS = 60.0
_SHOWN_CHARS = 60
# Date shapes the ETL does not parse (day or month first, month names), told apart from other text to say so.
_OTHER_DATE_SHAPE = re.compile(
    r"^(\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}"
    r"|\d{1,2}(st|nd|rd|th)?[ \-][A-Za-z]{3,9}\.?[ \-,]+\d{2,4}"
    r"|[A-Za-z]{3,9}\.?[ \-]\d{1,2}(st|nd|rd|th)?,?[ \-]\d{2,4})"
    r"([ T]\d{1,2}:\d{2}(:\d{2})?.*)?$"
)


class SchemaError(ValueError):
    """No schema can be inferred or reused (a named column is absent, the snapshot is unreadable, no column is
    usable, the frozen file is broken); the message says why."""


def infer_schema(
    raw_data_path: str,
    raw_format: str,
    *,
    target: str,
    id_column: str | None = None,
    exclude: Sequence[str] = (),
    positive_label: str | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    max_missing_fraction: float = 0.5,
) -> tuple[DatasetSchema, dict[str, str]]:
    """The schema of the snapshot's first ``sample_rows`` rows, and why each other column is left out.

    ``target``, ``id_column``, ``positive_label`` and ``exclude`` are kept as given; the feature columns are every
    other column with a type, in the snapshot's order, named as the snapshot names them. Raises
    :class:`SchemaError` if the target or id column is absent or no column can be a feature.
    """
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be at least 1, got {sample_rows}")
    sample = read_sample(raw_data_path, raw_format, sample_rows)
    names = sample.column_names
    for role, name in (("target", target), ("id column", id_column)):
        if name is not None and name not in names:
            raise SchemaError(f"the {role} {name!r} is not a column of the snapshot; it has {_shown_names(names)}")
    absent = sorted(set(exclude) - set(names))
    if absent:
        log.info("excluded column(s) not in the snapshot: %s", absent)
    columns: list[ColumnSpec] = []
    excluded: dict[str, str] = {}
    for name, raw in zip(names, sample.columns, strict=True):
        found = _role_reason(name, target, id_column, exclude) or classify_column(
            name, raw.combine_chunks(), max_missing_fraction
        )
        if isinstance(found, ColumnSpec):
            columns.append(found)
            log.info("column %r: %s", name, found.type)
        else:
            excluded[name] = found
            log.info("column %r left out: %s", name, found)
    if not columns:
        raise SchemaError(f"no column of the snapshot can be a feature: {excluded}")
    try:
        schema = DatasetSchema(
            target=target, id_column=id_column, positive_label=positive_label, exclude=list(exclude), columns=columns
        )
    except ValidationError as exc:
        raise SchemaError(f"the inferred schema is not valid: {exc}") from None
    return schema, excluded


def _role_reason(name: str, target: str, id_column: str | None, exclude: Sequence[str]) -> str | None:
    if name == target:
        return "the target"
    if name == id_column:
        return "the id column"
    if name in exclude:
        return "listed in dataset_schema.exclude"
    return None


def _shown_names(names: list[str], count: int = 30) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return f"{[n[:100] for n in names[:count]]}{more}"


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…")


def read_sample(raw_data_path: str, raw_format: str, rows: int) -> pa.Table:
    """The snapshot's first ``rows`` rows as Arrow text columns, read by the ETL's own readers (so both see the
    same cells and the same column names)."""
    fmt = "jsonl" if raw_format == "json_api" else raw_format  # the crawl stores API pages as JSON lines
    try:
        reading.refuse_duplicate_columns(raw_data_path, fmt)
        if fmt == "csv":
            try:
                return _first_rows(reading.arrow_csv_chunks(raw_data_path, rows))
            except reading.FastReaderGaveUp:
                pass  # as the ETL does: pandas reads some CSVs Arrow refuses
        return _first_rows(reading.pandas_chunks(raw_data_path, fmt, rows))
    except (reading.ReadError, EtlError, OSError) as exc:
        raise SchemaError(f"cannot read the raw snapshot {raw_data_path} as {fmt}: {exc}") from exc


def _first_rows(chunks: Iterator[pa.Table]) -> pa.Table:
    try:
        first = next(chunks, None)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return first if first is not None else pa.table({})


def classify_column(name: str, raw: pa.Array, max_missing_fraction: float = 0.5) -> ColumnSpec | str:
    """The column's spec, or why it is not a feature."""
    text = as_text(raw)
    present = len(text) - text.null_count
    if present == 0:
        return "empty: no value in the sampled rows"
    distinct = pc.unique(text.drop_null())
    if len(distinct) == 1:
        return f"constant: every value is {_shown(distinct[0].as_py())}"
    free_text = _free_text_reason(text.drop_null())
    if free_text:
        return free_text
    missing_share = 1 - present / len(text)
    if missing_share > max_missing_fraction:
        return (
            f"mostly empty: {missing_share:.1%} of the values are missing, more than max_missing_fraction="
            f"{max_missing_fraction:g} (the ETL would refuse the column)"
        )
    return _typed(name, text, distinct)


def _free_text_reason(present: pa.Array) -> str | None:
    words = pc.mean(pc.count_substring_regex(present, r"\S+")).as_py()
    chars = pc.mean(pc.utf8_length(present)).as_py()
    if words >= FREE_TEXT_MEAN_WORDS or chars >= FREE_TEXT_MEAN_CHARS:
        return f"free text: {words:.1f} words and {chars:.0f} characters per value on average"
    return None


def _typed(name: str, text: pa.Array, distinct: pa.Array) -> ColumnSpec | str:
    """Numbers, then booleans, then dates, then categories: the first kind every value fits."""
    numbers = parse_numbers(text)[text.is_valid().to_numpy(zero_copy_only=False)]
    if np.isfinite(numbers).all():
        if not (numbers % 1 == 0).all():
            return ColumnSpec(name=name, type="numeric")
        counting = float(np.mean(np.diff(numbers) == 1)) if len(numbers) > 1 else 0.0
        if counting >= COUNTER_STEP_SHARE:
            return f"id-like: counts rows (a value is the previous one plus 1 in {counting:.1%} of consecutive rows)"
        return ColumnSpec(name=name, type="integer")
    tokens = set(pc.utf8_lower(distinct).to_pylist())
    if tokens <= TRUE_TOKENS | FALSE_TOKENS and tokens & TRUE_TOKENS and tokens & FALSE_TOKENS:
        return ColumnSpec(name=name, type="boolean")
    date = _date_or_reason(name, distinct)
    if date is not None:
        return date
    present = len(text) - text.null_count
    if len(distinct) > ID_MIN_DISTINCT and len(distinct) >= ID_UNIQUE_SHARE * present:
        return f"id-like: {len(distinct)} distinct values in {present} rows"
    if len(distinct) > MAX_CATEGORIES:
        return f"too many distinct values for a category: {len(distinct)} (at most {MAX_CATEGORIES})"
    return ColumnSpec(name=name, type="categorical")


def _date_or_reason(name: str, distinct: pa.Array) -> ColumnSpec | str | None:
    """A date column if the ETL parses every value; why not, if they look like dates it does not parse; else None."""
    if not pc.all(pc.match_substring_regex(distinct, r"[0-9]")).as_py():
        return None  # every date has digits: spare the parser label columns
    spec = ColumnSpec(name=name, type="date")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' notes on mixed time zones: the parse result below decides
            parsed = coerce_column(distinct, spec).codes == 0
    except Exception as exc:  # whatever breaks the ETL's date parsing (it fails a run) makes the column no date
        all_iso = pc.all(pc.match_substring_regex(distinct, r"^\d{4}[-/]\d{1,2}[-/]\d{1,2}")).as_py()
        if all_iso:
            return (
                f"dates the ETL cannot parse together (e.g. naive and time-zoned timestamps mixed):"
                f" {type(exc).__name__}: {str(exc)[:200]}"
            )
        return None
    if parsed.all():
        return spec
    values = distinct.to_pylist()
    other_shape = np.array([bool(_OTHER_DATE_SHAPE.match(value)) for value in values])
    if other_shape.any() and (parsed | other_shape).all():
        example = values[int(np.flatnonzero(other_shape)[0])]
        return (
            f"dates in a format the ETL does not parse (e.g. {_shown(example)}); it parses year-first dates"
            " (2012-01-31, 2012/01/31, ISO timestamps): convert them at the source"
        )
    return None


# --- freezing -----------------------------------------------------------------------------------------------------


def schema_json(schema: DatasetSchema) -> dict[str, Any]:
    """The schema as the ``dataset_schema`` Variable takes it (settings left at their defaults left out)."""
    return schema.model_dump(mode="json", exclude_defaults=True)


def schema_key(config: PipelineConfig) -> str:
    """Names a frozen schema: the source, the target, the id column and the exclusions (sorted)."""
    declared = config.dataset_schema
    identity = [config.crawl_url, declared.target, declared.id_column, sorted(declared.exclude)]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


def frozen_schema_path(config: PipelineConfig) -> Path:
    return DataLayout.of(config.data_dir).root / SCHEMAS_DIR / f"{schema_key(config)}.json"


def resolve_schema(config: PipelineConfig, raw_data_path: str, raw_format: str) -> tuple[DatasetSchema, dict[str, str]]:
    """The schema a run uses, and why each left-out column is left out.

    Declared columns: ``config.dataset_schema`` unchanged, with no reasons. Otherwise the frozen schema for this
    source and target; the first run infers it from its snapshot and freezes it (when two runs race, the first
    to freeze wins and both use its file). ``positive_label`` is not part of the key: the current setting wins.
    """
    declared = config.dataset_schema
    if declared.columns is not None:
        return declared, {}
    path = frozen_schema_path(config)
    if path.exists():
        log.info("dataset schema: reusing %s (frozen by an earlier run; delete it to infer again)", path)
    else:
        schema, excluded = infer_schema(
            raw_data_path,
            raw_format,
            target=declared.target,
            id_column=declared.id_column,
            exclude=declared.exclude,
            positive_label=declared.positive_label,
            max_missing_fraction=config.max_missing_fraction,
        )
        if _freeze(path, schema_json(schema)):
            atomic_write_json(_excluded_path(path), {"excluded": excluded, "inferred_from": raw_data_path})
            log.info("dataset schema: inferred from %s and frozen as %s", raw_data_path, path)
    return _load_frozen(path, declared.positive_label)


def _excluded_path(frozen: Path) -> Path:
    return frozen.with_name(frozen.stem + EXCLUDED_SUFFIX)


def _freeze(path: Path, payload: dict[str, Any]) -> bool:
    """Write ``path`` unless it exists (first writer wins, never a half-written file); True if this call wrote it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = temp_sibling(path)
    try:
        atomic_write_json(staged, payload)
        os.link(staged, path)  # fails if another run froze it meanwhile, unlike a rename
        return True
    except FileExistsError:
        log.info("dataset schema: another run froze %s first; using it", path)
        return False
    finally:
        staged.unlink(missing_ok=True)


def _load_frozen(path: Path, positive_label: str | None) -> tuple[DatasetSchema, dict[str, str]]:
    try:
        payload = read_json(path)
        schema = DatasetSchema.model_validate({**payload, "positive_label": positive_label})
    except (OSError, ValueError) as exc:  # ValidationError and JSONDecodeError are ValueErrors
        raise SchemaError(
            f"the frozen schema {path} cannot be used ({exc}); fix it or delete it to infer again"
        ) from exc
    try:
        excluded = read_json(_excluded_path(path))["excluded"]
    except (OSError, ValueError, KeyError, TypeError):
        excluded = {}  # the reasons are informational: a run that froze the schema died before writing them
    return schema, {str(name): str(reason) for name, reason in excluded.items()}
