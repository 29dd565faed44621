"""The model's input schema and the conversion of JSON request values into typed numpy columns.

Each column converter has a fast path for the common, clean case and a per-value path that names the offending row,
so a bad request gets a 422 saying which row and column are wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS

# An error response lists at most this many problems (and says how many more there were).
MAX_ERRORS_REPORTED = 20
# Request values and column names are quoted in error messages at most this long, and at most this many names per
# message: the caller controls them, and an error must not echo a megabyte back.
MAX_QUOTED_CHARS = 40
MAX_NAMES_QUOTED = 5


class InputError(ValueError):
    """A request does not match the model's input schema; ``errors`` lists row/column/message."""

    def __init__(self, errors: list[dict[str, Any]], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        parts = [_describe(e) for e in errors]
        more = self.total - len(errors)
        if more > 0:
            parts.append(f"... and {more} more problem(s)")
        super().__init__("; ".join(parts))


def quoted(value: Any) -> str:
    """A request value as an error message shows it: type and a clipped repr; containers only by size.

    Containers are never repr'd: a nested value can be megabytes long and deep enough to exhaust the recursion limit.
    """
    if isinstance(value, (list, dict)):
        return f"{type(value).__name__} of {len(value)} item(s)"
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit str() limit
        text = "(too long to show)"
    return f"{type(value).__name__} {_clip(text)}"


def quoted_names(names: Collection[str]) -> str:
    """Column names for an error message: at most MAX_NAMES_QUOTED of them (sorted), each clipped."""
    listed = [_clip(name) for name in heapq.nsmallest(MAX_NAMES_QUOTED, names)]
    more = len(names) - len(listed)
    return f"{listed}" + (f" and {more} more" if more > 0 else "")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 3] + "..."


def _describe(error: dict[str, Any]) -> str:
    where = []
    if error.get("row") is not None:
        where.append(f"row {error['row']}")
    if error.get("column") is not None:
        where.append(f"column {error['column']!r}")
    return f"{', '.join(where)}: {error['error']}" if where else str(error["error"])


# --------------------------------------------------------------------------------------------------------------
# Column converters: raw JSON values of one column -> a numpy array of the dtype the model was trained with.
# --------------------------------------------------------------------------------------------------------------


class _BadValue(ValueError):
    pass


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _to_float(value: Any) -> float:
    # Booleans count as 1/0: the train stage feeds boolean features to the model as 0/1 numbers.
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise _BadValue(f"number too large: {quoted(value)}") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _BadValue(f"expected a number, got {quoted(value)}") from None
    else:
        raise _BadValue(f"expected a number, got {quoted(value)}")
    if math.isinf(number):
        raise _BadValue(f"expected a finite number, got {quoted(value)}")
    return number


def _to_int(value: Any) -> float:
    number = _to_float(value)
    if not math.isnan(number) and number != math.floor(number):
        raise _BadValue(f"expected an integer, got {quoted(value)}")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # Integer-looking categories (codes) arrive as JSON numbers often enough to accept them.
        return str(value)
    raise _BadValue(f"expected a string, got {quoted(value)}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)  # 0/1 and 0.0/1.0: how the train stage and pandas carry booleans
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TOKENS:
            return True
        if text in FALSE_TOKENS:
            return False
    raise _BadValue(f"expected a boolean, got {quoted(value)}")


_MIN_DATETIME = dt.datetime(1678, 1, 1)
_MAX_DATETIME = dt.datetime(2262, 1, 1)


def _to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not accept the Z suffix
            text = text[:-1] + "+00:00"
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _BadValue(f"expected an ISO 8601 date/datetime string, got {quoted(value)}") from None
    else:
        raise _BadValue(f"expected an ISO 8601 date/datetime string, got {quoted(value)}")
    if when.tzinfo is not None:
        # Training data holds naive UTC timestamps; normalise aware inputs to that.
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if not _MIN_DATETIME <= when < _MAX_DATETIME:
        raise _BadValue(f"datetime {quoted(value)} is out of the supported range (1678..2261)")
    return when


def _convert_slow(
    values: list[Any], convert: Callable[[Any], Any], null: Any, column: str, errors: list[dict[str, Any]]
) -> list[Any]:
    out: list[Any] = []
    for row, value in enumerate(values):
        if _is_null(value):
            out.append(null)
            continue
        try:
            out.append(convert(value))
        except _BadValue as exc:
            errors.append({"row": row, "column": column, "error": str(exc)})
            out.append(null)
    return out


def _numbers(values: list[Any], column: str, errors: list[dict[str, Any]], *, integer: bool) -> np.ndarray:
    kinds = {type(v) for v in values}
    if kinds <= {int}:
        try:
            return np.array(values, dtype=np.int64) if integer else np.array(values, dtype=np.float64)
        except OverflowError:
            pass  # fall through to the per-value path, which reports the row
    if kinds <= {int, float, bool, type(None)}:
        # None -> NaN is what numpy does for float arrays; the model's imputer fills it.
        try:
            array = np.array(values, dtype=np.float64)
        except OverflowError:
            array = np.array([math.inf])  # huge int: let the per-value path name the row
        if not np.isinf(array).any() and (not integer or np.all(np.isnan(array) | (array == np.floor(array)))):
            return array
    converted = _convert_slow(values, _to_int if integer else _to_float, math.nan, column, errors)
    array = np.array(converted, dtype=np.float64)
    if integer and not np.isnan(array).any():
        return array.astype(np.int64)
    return array


def _strings(values: list[Any], column: str, errors: list[dict[str, Any]]) -> np.ndarray:
    kinds = {type(v) for v in values}
    if kinds <= {str}:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    # Missing categories become NaN, the marker scikit-learn's imputers and encoders treat as missing (None is not).
    converted = _convert_slow(values, _to_str, math.nan, column, errors)
    array = np.empty(len(converted), dtype=object)
    array[:] = converted
    return array


def _booleans(values: list[Any], column: str, errors: list[dict[str, Any]]) -> np.ndarray:
    if {type(v) for v in values} <= {bool}:
        return np.array(values, dtype=bool)
    converted = _convert_slow(values, _to_bool, None, column, errors)
    if any(v is None for v in converted):
        # Like pandas: a boolean column with gaps becomes float 1.0/0.0/NaN, which imputers understand.
        return np.array([math.nan if v is None else float(v) for v in converted], dtype=np.float64)
    return np.array(converted, dtype=bool)


def _datetimes(values: list[Any], column: str, errors: list[dict[str, Any]]) -> np.ndarray:
    converted = _convert_slow(values, _to_datetime, None, column, errors)
    # None -> NaT.
    return np.array(converted, dtype="datetime64[ns]")


_CONVERTERS: dict[str, Callable[[list[Any], str, list[dict[str, Any]]], np.ndarray]] = {
    "long": lambda v, c, e: _numbers(v, c, e, integer=True),
    "integer": lambda v, c, e: _numbers(v, c, e, integer=True),
    "double": lambda v, c, e: _numbers(v, c, e, integer=False),
    "float": lambda v, c, e: _numbers(v, c, e, integer=False),
    "string": _strings,
    "boolean": _booleans,
    "datetime": _datetimes,
}


@dataclasses.dataclass(frozen=True)
class InputColumn:
    """One column of the model's input signature: its name, MLflow type and whether a row must carry it."""

    name: str
    type: str
    required: bool = True


@dataclasses.dataclass(frozen=True)
class InputSchema:
    """The model's input columns (from its MLflow signature) and how to turn JSON rows into a DataFrame."""

    columns: tuple[InputColumn, ...]
    names: frozenset[str] = dataclasses.field(init=False)
    required: frozenset[str] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        unsupported = [f"{c.name} ({c.type})" for c in self.columns if c.type not in _CONVERTERS]
        if unsupported:
            raise ValueError(f"unsupported input column type(s): {', '.join(unsupported)}")
        object.__setattr__(self, "names", frozenset(c.name for c in self.columns))
        object.__setattr__(self, "required", frozenset(c.name for c in self.columns if c.required))

    @classmethod
    def from_signature(cls, signature: Any) -> InputSchema:
        if signature is None or signature.inputs is None:
            raise ValueError("the model has no input signature; requests could not be validated")
        if signature.inputs.is_tensor_spec() or not signature.inputs.has_input_names():
            raise ValueError("the model's input signature is not made of named columns")
        columns = []
        for spec in signature.inputs.to_dict():
            if "name" not in spec or spec.get("type") in (None, "tensor"):
                raise ValueError(f"the model's input signature is not column-based: {spec}")
            columns.append(InputColumn(name=spec["name"], type=spec["type"], required=spec.get("required", True)))
        return cls(tuple(columns))

    def to_list(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns]

    def frame(self, rows: Sequence[Any]) -> pd.DataFrame:
        """Validate JSON rows and build the model input; raises :class:`InputError` naming rows and columns."""
        # Built from whole numpy columns: far cheaper than DataFrame(list_of_dicts) or MLflow's schema enforcement.
        return pd.DataFrame(self.arrays(rows), copy=False)

    def arrays(self, rows: Sequence[Any]) -> dict[str, np.ndarray]:
        """Validate JSON rows into one typed numpy array per input column (the DataFrame's columns)."""
        errors, total = self._shape_errors(rows)
        if errors:
            raise InputError(errors, total)
        data: dict[str, np.ndarray] = {}
        for column in self.columns:
            values = [row.get(column.name) for row in rows]
            data[column.name] = _CONVERTERS[column.type](values, column.name, errors)
        if errors:
            errors.sort(key=lambda e: (e["row"], e["column"]))
            raise InputError(errors[:MAX_ERRORS_REPORTED], len(errors))
        return data

    def _shape_errors(self, rows: Sequence[Any]) -> tuple[list[dict[str, Any]], int]:
        """Rows that are not objects, lack a required column or carry an unknown one: the first
        MAX_ERRORS_REPORTED problems, and how many there are in all."""
        errors: list[dict[str, Any]] = []
        total = 0
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                problems = [f"expected an object, got {type(row).__name__}"]
            elif row.keys() == self.names:
                continue
            else:
                problems = self._column_problems(row.keys())
            total += len(problems)
            for problem in problems[: MAX_ERRORS_REPORTED - len(errors)]:
                errors.append({"row": index, "column": None, "error": problem})
        return errors, total

    def _column_problems(self, keys: Collection[str]) -> list[str]:
        problems = []
        missing = self.required - keys
        if missing:
            problems.append(f"missing column(s) {quoted_names(missing)}")
        extra = [key for key in keys if key not in self.names]
        if extra:
            problems.append(f"unknown column(s) {quoted_names(extra)}")
        return problems
