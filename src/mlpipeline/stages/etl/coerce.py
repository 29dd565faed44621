"""Typing one column of a chunk: strip, parse, check against the declared :class:`~mlpipeline.config.ColumnSpec`,
and say why each bad row is bad (the quarantine reasons)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from mlpipeline.config import ColumnSpec, DatasetSchema
from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.numbers import to_numeric
from mlpipeline.stages.etl.result import EtlError

# Blank-ish values sources use for "nothing"; they count as missing after stripping.
# "?" is how several classic public datasets (UCI's auto-mpg, adult, ...) write a missing value.
MISSING_TOKENS = pa.array(["", "nan", "NaN", "None", "null", "NULL", "NA", "<NA>", "?"])
# What Python's str.strip() removes (every character whose isspace() is true); a test checks the list.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Texts both polars and pandas turn into the same float: plain decimals of at most 15 digits are parsed exactly
# (one correctly rounded operation) by both; anything else goes to pandas.to_numeric.
_FAST_NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"
_FAST_NUMBER_MAX_CHARS = 15  # bytes: a text that matches is ASCII
_TEXT = pl.col("text")
_DATE_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9]  # the byte positions of YYYY-MM-DD's digits
# A time with a zone (Z, +HH, +HHMM, +HH:MM). pandas parses a naive time that follows a zoned one in the same call
# in that zone, so the two kinds are parsed apart.
_ZONED_TIME = r"[T ][0-9].*([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$"
_FAST_DATE_YEARS = (1678, 2261)  # inside datetime64[ns]; other years go to pandas
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_NS_PER_DAY = 86_400 * 10**9
# The Arrow type each declared column type is coerced to (and staged as between the passes).
STAGED_TYPES: dict[str, pa.DataType] = {
    "numeric": pa.float64(),
    "integer": pa.float64(),
    "categorical": pa.string(),
    "boolean": pa.bool_(),
    "date": pa.timestamp("ns"),
}


def as_text(column: pa.Array, tokens_are_missing: bool = False) -> pa.Array:
    """Raw values as stripped strings, with blanks as missing (sources disagree on how to say 'nothing').

    ``tokens_are_missing``: the reader already read every value that is one of ``MISSING_TOKENS`` as missing (the
    Arrow CSV reader does); then, when stripping changed no value, no value is a token and the check is skipped.
    """
    text = pc.utf8_trim(column, characters=PYTHON_WHITESPACE)
    if tokens_are_missing and _total_bytes(text) == _total_bytes(column):
        return text
    return pc.if_else(pc.is_in(text, value_set=MISSING_TOKENS), pa.scalar(None, pa.string()), text)


def _total_bytes(text: pa.Array) -> int:
    return pc.sum(pc.binary_length(text)).as_py() or 0


def mask(condition: pa.Array) -> np.ndarray:
    return pc.fill_null(condition, False).to_numpy(zero_copy_only=False)


def parse_numbers(text: pa.Array) -> np.ndarray:
    """``pd.to_numeric(text, errors="coerce")`` as float64: polars for plain decimals (its regex and float parser
    are about twice as fast as Arrow's here, and correctly rounded like both), pandas for the rest."""
    parsed = pl.DataFrame({"text": pl.from_arrow(text)}).select(
        fast=(_TEXT.str.contains(_FAST_NUMBER) & (_TEXT.str.len_bytes() <= _FAST_NUMBER_MAX_CHARS)).fill_null(False),
        value=_TEXT.cast(pl.Float64, strict=False),
    )
    fast = parsed.get_column("fast").to_numpy()
    values = np.where(fast, parsed.get_column("value").to_numpy(), np.nan)
    slow = ~fast & text.is_valid().to_numpy(zero_copy_only=False)
    if slow.any():
        strings = pd.Series(text.filter(pa.array(slow)).to_pylist(), dtype="string")
        values[slow] = to_numeric(strings).to_numpy()
    return values


def _plain_dates(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The rows that are ``YYYY-MM-DD`` (10 bytes: digits and two dashes) and their ten bytes, one row each.

    Checked on the bytes with numpy rather than a regex (several times faster on a chunk)."""
    candidates = mask(pc.equal(pc.binary_length(text), 10))
    rows = np.flatnonzero(candidates)
    if not len(rows):
        return rows, np.zeros((0, 10), dtype=np.uint8)
    plain = text.filter(pa.array(candidates))
    start = int(np.frombuffer(plain.buffers()[1], np.int32, count=1, offset=plain.offset * 4)[0])
    chars = np.frombuffer(plain.buffers()[2], np.uint8)[start : start + 10 * len(plain)].reshape(-1, 10)
    digits = chars[:, _DATE_DIGITS] - np.uint8(ord("0"))  # a non-digit wraps round past 9
    shaped = (digits <= 9).all(axis=1) & (chars[:, 4] == ord("-")) & (chars[:, 7] == ord("-"))
    return rows[shaped], digits[shaped]


def _days_since_1970(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days from 1970-01-01 of valid proleptic Gregorian dates (H. Hinnant's days_from_civil, for years > 0)."""
    year = year - (month <= 2)
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return (era * 146097 + day_of_era - 719468).astype(np.int64)


def _parse_dates(text: pa.Array) -> np.ndarray:
    """``pd.to_datetime(text, errors="coerce", format="ISO8601")`` as naive datetime64[ns]; plain
    ``YYYY-MM-DD`` dates are decoded with numpy, everything else by pandas."""
    values = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
    fast = np.zeros(len(text), dtype=bool)
    rows, digits = _plain_dates(text)
    if len(rows):
        digits = digits.astype(np.int32)
        year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
        month = digits[:, 4] * 10 + digits[:, 5]
        day = digits[:, 6] * 10 + digits[:, 7]
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        month_days = _DAYS_IN_MONTH[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
        valid = (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
        valid &= (year >= _FAST_DATE_YEARS[0]) & (year <= _FAST_DATE_YEARS[1])
        rows = rows[valid]  # impossible dates: pandas decides (it says NaT)
        values.view(np.int64)[rows] = _days_since_1970(year[valid], month[valid], day[valid]) * _NS_PER_DAY
        fast[rows] = True
    slow = ~fast & text.is_valid().to_numpy(zero_copy_only=False)
    if slow.any():
        slow_text = text.filter(pa.array(slow))
        zoned = np.zeros(len(text), dtype=bool)
        zoned[slow] = mask(pc.match_substring_regex(slow_text, _ZONED_TIME))
        for part in (slow & zoned, slow & ~zoned):
            if part.any():
                strings = pd.Series(text.filter(pa.array(part)).to_pylist(), dtype="string")
                # utc=True: zoned timestamps become UTC, naive ones stay as written, and a column may mix both.
                parsed = pd.to_datetime(strings, errors="coerce", format="ISO8601", utc=True).dt.tz_convert(None)
                values[part] = parsed.to_numpy(dtype="datetime64[ns]")
    return values


@dataclass
class Typed:
    """One declared column of a chunk, typed, plus why each row is bad (0 = fine, k = ``reasons[k - 1]``)."""

    values: pa.Array
    codes: np.ndarray
    reasons: list[str]


def flag(codes: np.ndarray, reasons: list[str], where: np.ndarray, reason: str) -> None:
    """Give rows that have no reason yet this one (the first failing check wins)."""
    reasons.append(reason)
    codes[where & (codes == 0)] = len(reasons)


def coerce_column(raw: pa.Array, spec: ColumnSpec, tokens_are_missing: bool = False) -> Typed:
    """``raw`` typed as ``spec`` declares, with a reason code per bad row (``tokens_are_missing``: see
    :func:`as_text`)."""
    text = as_text(raw, tokens_are_missing)
    present = text.is_valid().to_numpy(zero_copy_only=False)
    codes = np.zeros(len(text), dtype=np.uint8)
    reasons: list[str] = []

    if spec.type in ("numeric", "integer"):
        numbers = parse_numbers(text)
        finite_or_inf = ~np.isnan(numbers)
        flag(codes, reasons, present & ~finite_or_inf, f"{spec.name}: not a number")
        # inf, -inf, Infinity, 1e999: a number, but not one a model can learn from (NaN text counts as missing).
        flag(codes, reasons, np.isinf(numbers), f"{spec.name}: not a finite number")
        with np.errstate(invalid="ignore"):
            if spec.type == "integer":
                flag(codes, reasons, finite_or_inf & (numbers % 1 != 0), f"{spec.name}: not an integer")
            if spec.min is not None:
                flag(codes, reasons, numbers < spec.min, f"{spec.name}: below minimum {spec.min:g}")
            if spec.max is not None:
                flag(codes, reasons, numbers > spec.max, f"{spec.name}: above maximum {spec.max:g}")
        values: pa.Array = pa.array(numbers)
    elif spec.type == "categorical":
        values = text
        if spec.categories is not None:
            known = mask(pc.is_in(text, value_set=pa.array(spec.categories, pa.string())))
            flag(codes, reasons, present & ~known, f"{spec.name}: unknown category")
    elif spec.type == "boolean":
        lowered = pc.utf8_lower(text)
        is_true = mask(pc.is_in(lowered, value_set=pa.array(sorted(TRUE_TOKENS))))
        is_false = mask(pc.is_in(lowered, value_set=pa.array(sorted(FALSE_TOKENS))))
        values = pa.array(is_true, mask=~(is_true | is_false))
        flag(codes, reasons, present & ~(is_true | is_false), f"{spec.name}: not a boolean")
    elif spec.type == "date":
        dates = _parse_dates(text)
        values = pa.array(dates, mask=np.isnat(dates))
        flag(codes, reasons, present & np.isnat(dates), f"{spec.name}: not an ISO date")
    else:  # pragma: no cover - the config type forbids other values
        raise EtlError(f"unsupported column type {spec.type!r}")

    if not spec.nullable:
        flag(codes, reasons, ~present, f"{spec.name}: missing value")
    return Typed(values, codes, reasons)


def missing(typed: Typed) -> np.ndarray:
    """Which rows have no value (null, or NaN for numbers)."""
    return mask(pc.is_null(typed.values, nan_is_null=True))


def check_lengths(raw: dict[str, pa.Array], names: list[str], max_chars: int) -> Typed:
    """Rows with a value longer than ``max_chars`` characters in one of the columns ``names`` (the first one wins).

    Checked before anything else, so such a value is never parsed; the quarantine shows only its start.
    """
    rows = len(raw[names[0]]) if names else 0
    codes = np.zeros(rows, dtype=np.uint16)  # one reason per flagged column: may be more than 255
    reasons: list[str] = []
    for name in names:
        column = raw[name]
        too_long = mask(pc.greater(pc.binary_length(column), max_chars))  # bytes >= characters: a cheap filter
        if too_long.any():
            too_long[too_long] = mask(pc.greater(pc.utf8_length(column.filter(pa.array(too_long))), max_chars))
            flag(codes, reasons, too_long, f"{name}: longer than max_cell_chars={max_chars}")
    return Typed(pa.nulls(0), codes, reasons)


def check_columns(available: list[str], schema: DatasetSchema) -> None:
    missing = [schema.target] if schema.target not in available else []
    missing += [c.name for c in schema.columns if c.required and c.name not in available]
    if missing:
        raise EtlError(
            f"the source is missing required column(s) {missing}; it has {sorted(available)}. "
            "Fix the source or the dataset_schema setting."
        )
