"""FastAPI model server for the registered champion model.

Serves ``models:/<name>@<alias>`` from the MLflow registry as a native scikit-learn object (fast ``predict_proba``)
and validates requests against the model's logged input signature. A background thread watches the alias; a new
version is downloaded, unpickled and warmed up completely before one reference is swapped, so requests never see a
half-loaded model and a broken version never replaces a working one.

Run it with ``uvicorn --factory mlpipeline.serving:app_from_env`` or ``python -m mlpipeline.serving --port 8000``.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process: the server already runs requests on several threads, and extra compute threads
# only fight them for the cores. Must happen before numpy/scikit-learn load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Model downloads happen on every reload; progress bars would only clutter the server log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mlpipeline.constants import DEFAULT_ALIAS, DEFAULT_MODEL_NAME, FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.features import DATE_PARTS, DateParts

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 10.0
DEFAULT_MAX_ROWS = 10_000
# Above this many rows the (pure Python) validation runs in the thread pool instead of blocking the event loop.
_INLINE_ROWS = 256
_MAX_ERRORS_REPORTED = 20
_ENDPOINTS = ("/health", "/model", "/reload", "/predict", "/metrics")


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


def _describe(error: dict[str, Any]) -> str:
    where = []
    if error.get("row") is not None:
        where.append(f"row {error['row']}")
    if error.get("column") is not None:
        where.append(f"column {error['column']!r}")
    return f"{', '.join(where)}: {error['error']}" if where else str(error["error"])


# --------------------------------------------------------------------------------------------------------------
# Column converters: raw JSON values of one column -> a numpy array of the dtype the model was trained with.
# Each has a fast path for the common, clean case and a per-value path that names the offending row.
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
            raise _BadValue(f"number {value!r} is too large") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _BadValue(f"expected a number, got {value!r}") from None
    else:
        raise _BadValue(f"expected a number, got {type(value).__name__} {value!r}")
    if math.isinf(number):
        raise _BadValue(f"expected a finite number, got {value!r}")
    return number


def _to_int(value: Any) -> float:
    number = _to_float(value)
    if not math.isnan(number) and number != math.floor(number):
        raise _BadValue(f"expected an integer, got {value!r}")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # Integer-looking categories (codes) arrive as JSON numbers often enough to accept them.
        return str(value)
    raise _BadValue(f"expected a string, got {type(value).__name__} {value!r}")


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
    raise _BadValue(f"expected a boolean, got {type(value).__name__} {value!r}")


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
            raise _BadValue(f"expected an ISO 8601 date/datetime string, got {value!r}") from None
    else:
        raise _BadValue(f"expected an ISO 8601 date/datetime string, got {type(value).__name__} {value!r}")
    if when.tzinfo is not None:
        # Training data holds naive UTC timestamps; normalise aware inputs to that.
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if not _MIN_DATETIME <= when < _MAX_DATETIME:
        raise _BadValue(f"datetime {value!r} is out of the supported range (1678..2261)")
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
        errors: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                errors.append({"row": index, "column": None, "error": f"expected an object, got {type(row).__name__}"})
                continue
            keys = row.keys()
            if keys == self.names:
                continue
            missing = sorted(self.required - keys)
            extra = sorted(keys - self.names)
            if missing:
                errors.append({"row": index, "column": None, "error": f"missing column(s) {missing}"})
            if extra:
                errors.append({"row": index, "column": None, "error": f"unknown column(s) {extra}"})
        if errors:
            raise InputError(errors[:_MAX_ERRORS_REPORTED], len(errors))
        data: dict[str, np.ndarray] = {}
        for column in self.columns:
            values = [row.get(column.name) for row in rows]
            data[column.name] = _CONVERTERS[column.type](values, column.name, errors)
        if errors:
            errors.sort(key=lambda e: (e["row"], e["column"]))
            raise InputError(errors[:_MAX_ERRORS_REPORTED], len(errors))
        return data


# --------------------------------------------------------------------------------------------------------------
# Loading a model version from the registry.
# --------------------------------------------------------------------------------------------------------------


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """An immutable, fully loaded model version: the unit that is swapped atomically."""

    name: str
    version: str
    alias: str
    run_id: str | None
    model: Any
    schema: InputSchema
    classes: tuple[Any, ...]
    positive_index: int
    metrics: dict[str, float | None]
    trained_at: str | None
    data_fingerprint: str | None
    source: str | None
    loaded_at: str

    # How labels are derived; see _prediction_plan().
    preprocess: Any = None
    final_step: Any = None
    labels_are_argmax: bool = True
    # The numpy equivalent of the pipeline for small requests, if it reproduced the sklearn path at load time.
    fast: _FastPipeline | None = None

    def predict_rows(self, rows: Sequence[Any]) -> tuple[list[Any], list[float]]:
        """Validate JSON rows and predict them: the /predict code path."""
        if self.fast is None or len(rows) > _FAST_PATH_MAX_ROWS:
            return self.predict(self.schema.frame(rows))
        labels, proba = self.fast.predict(self.schema.arrays(rows))
        if labels is None:
            labels = np.asarray(self.classes, dtype=object)[np.argmax(proba, axis=1)]
        return [_plain(v) for v in labels], proba[:, self.positive_index].tolist()

    def predict(self, frame: pd.DataFrame) -> tuple[list[Any], list[float]]:
        if self.labels_are_argmax:
            # One model call: for these estimators predict() *is* the argmax of predict_proba().
            proba = self.model.predict_proba(frame)
            labels = np.asarray(self.classes, dtype=object)[np.argmax(proba, axis=1)]
        else:
            # Unknown final estimator (e.g. a tuned decision threshold): ask it for labels, but preprocess once.
            features = self.preprocess.transform(frame) if self.preprocess is not None else frame
            proba = self.final_step.predict_proba(features)
            labels = self.final_step.predict(features)
        return [_plain(v) for v in labels], proba[:, self.positive_index].tolist()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "model_uri": f"models:/{self.name}/{self.version}",
            "source": self.source,
            "run_id": self.run_id,
            "metrics": self.metrics,
            "trained_at": self.trained_at,
            "data_fingerprint": self.data_fingerprint,
            "input_schema": self.schema.to_list(),
            "classes": [_plain(c) for c in self.classes],
            "positive_class": _plain(self.classes[self.positive_index]),
            "loaded_at": self.loaded_at,
        }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _prediction_plan(model: Any) -> tuple[Any, Any, bool]:
    """(preprocessing, final estimator, whether predict() == argmax(predict_proba()) for it)."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    argmax_estimators = (
        RandomForestClassifier,
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        GradientBoostingClassifier,
        DecisionTreeClassifier,
        # Binary: decision_function > 0 <=> P(class 1) > 0.5, and a tie picks class 0 both ways.
        LogisticRegression,
    )
    if isinstance(model, Pipeline) and len(model.steps) > 1:
        preprocess, final = model[:-1], model.steps[-1][1]
    else:
        preprocess, final = None, model
    # Exact type, not isinstance: a subclass may override predict().
    return preprocess, final, type(final) in argmax_estimators


# --------------------------------------------------------------------------------------------------------------
# Small-request fast path: the fitted pipeline re-expressed as plain numpy.
# scikit-learn's per-call input checks (DataFrame indexing, check_array, feature-name checks, set_output wrappers,
# one Python call per boosting iteration) cost ~10 ms for one row while the arithmetic takes microseconds. For the
# pipeline shape the train stage ships, the same computation is done here on the validated columns. It is built
# only from step types and settings it reproduces exactly, and only used after it has matched the sklearn path
# bit for bit on the model's input example (plus missing-value and unseen-category variants) at load time.
# --------------------------------------------------------------------------------------------------------------

# Above this many rows sklearn's fixed overhead is amortised and its compiled loops beat numpy tree traversal.
_FAST_PATH_MAX_ROWS = 16

_ColumnStep = Callable[[np.ndarray], np.ndarray]


def _date_parts(values: np.ndarray) -> list[np.ndarray]:
    """year, month, dayofweek, dayofyear as float64 (NaN for NaT): what DateParts derives through pandas."""
    days = values.astype("datetime64[D]")
    missing = np.isnat(days)
    days = np.where(missing, np.datetime64(0, "D"), days)
    years = days.astype("datetime64[Y]")
    year = years.astype(np.int64) + 1970
    month = days.astype("datetime64[M]").astype(np.int64) - (year - 1970) * 12 + 1
    dayofweek = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    dayofyear = (days - years).astype(np.int64) + 1
    parts = [part.astype(np.float64) for part in (year, month, dayofweek, dayofyear)]
    for part in parts:
        part[missing] = np.nan
    return parts


def _compile_imputer(step: Any) -> _ColumnStep | None:
    missing_values = step.missing_values
    if step.add_indicator or not (isinstance(missing_values, float) and math.isnan(missing_values)):
        return None
    statistics = np.asarray(step.statistics_)
    if len(statistics) != step.n_features_in_ or pd.isna(statistics).any():
        return None  # a column dropped for being empty at fit time: not reproduced here

    def impute(block: np.ndarray) -> np.ndarray:
        missing = block != block  # NaN, as sklearn's mask for missing_values=np.nan (object columns included)
        if not missing.any():
            return block
        block = block.copy()
        rows, columns = np.nonzero(missing)
        block[rows, columns] = statistics[columns]
        return block

    return impute


def _compile_one_hot(step: Any) -> _ColumnStep | None:
    if (
        step.drop is not None
        or step.handle_unknown != "ignore"
        or step.sparse_output
        or getattr(step, "_infrequent_enabled", False)
        or not all(isinstance(value, str) for categories in step.categories_ for value in categories)
    ):
        return None
    lookups = [{value: index for index, value in enumerate(categories)} for categories in step.categories_]
    offsets = np.cumsum([0] + [len(categories) for categories in step.categories_])
    dtype = step.dtype

    def encode(block: np.ndarray) -> np.ndarray:
        out = np.zeros((block.shape[0], offsets[-1]), dtype=dtype)
        for column, lookup in enumerate(lookups):
            for row, value in enumerate(block[:, column]):
                index = lookup.get(value)
                if index is not None:  # unseen category: all zeros, as handle_unknown="ignore"
                    out[row, offsets[column] + index] = 1
        return out

    return encode


def _compile_scaler(step: Any) -> _ColumnStep | None:
    mean, scale = step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None

    def scale_block(block: np.ndarray) -> np.ndarray:
        block = np.array(block, dtype=np.float64)  # a copy: the same in-place ops sklearn applies to its copy
        if mean is not None:
            block -= mean
        if scale is not None:
            block /= scale
        return block

    return scale_block


def _compile_step(step: Any) -> _ColumnStep | None:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    compilers: dict[type, Callable[[Any], _ColumnStep | None]] = {
        SimpleImputer: _compile_imputer,
        OneHotEncoder: _compile_one_hot,
        StandardScaler: _compile_scaler,
    }
    compiler = compilers.get(type(step))  # exact types: a subclass may transform differently
    return compiler(step) if compiler is not None else None


@dataclasses.dataclass(frozen=True)
class _Trees:
    """All trees of a binary HistGradientBoostingClassifier as flat node arrays, traversed for all trees at once."""

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    depth: int
    baseline: float
    loss: Any

    @classmethod
    def of(cls, estimator: Any) -> _Trees | None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        if type(estimator) is not HistGradientBoostingClassifier or estimator.n_trees_per_iteration_ != 1:
            return None
        nodes = [predictors[0].nodes for predictors in estimator._predictors]
        if not nodes or any(n["is_categorical"].any() for n in nodes):
            return None
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        flat = np.concatenate(nodes)
        shift = np.repeat(offsets, [len(n) for n in nodes])
        return cls(
            roots=offsets.astype(np.int64),
            feature=flat["feature_idx"].astype(np.int64),
            threshold=flat["num_threshold"].astype(np.float64),
            missing_left=flat["missing_go_to_left"].astype(bool),
            left=flat["left"].astype(np.int64) + shift,
            right=flat["right"].astype(np.int64) + shift,
            is_leaf=flat["is_leaf"].astype(bool),
            value=flat["value"].astype(np.float64),
            depth=int(flat["depth"].max()) + 1,
            baseline=float(np.asarray(estimator._baseline_prediction).ravel()[0]),
            loss=estimator._loss,
        )

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        n = features.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            leaf = self.is_leaf[node]
            if leaf.all():
                break
            x = features[rows, self.feature[node]]
            go_left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
        # Sequential sum from the baseline, tree after tree: the exact float order sklearn adds them in.
        summed = np.cumsum(np.hstack([np.full((n, 1), self.baseline), self.value[node]]), axis=1)
        return self.loss.predict_proba(summed[:, -1:])


@dataclasses.dataclass(frozen=True)
class _FastPipeline:
    date_columns: tuple[str, ...]
    blocks: tuple[tuple[tuple[str, ...], tuple[_ColumnStep, ...]], ...]  # ColumnTransformer parts, in order
    trees: _Trees | None
    final_step: Any
    labels_are_argmax: bool

    def predict(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray]:
        """(labels, or None when they are the argmax of the probabilities; class probabilities)."""
        columns = dict(columns)
        for date_column in self.date_columns:
            for part, values in zip(DATE_PARTS, _date_parts(columns.pop(date_column)), strict=True):
                columns[f"{date_column}_{part}"] = values
        outputs = []
        for names, steps in self.blocks:
            block = np.column_stack([columns[name] for name in names])
            if block.dtype != object:
                block = block.astype(np.float64)  # what check_array makes of int/bool/float columns
            for step in steps:
                block = step(block)
            outputs.append(block)
        features = np.hstack(outputs).astype(np.float64, copy=False)
        if self.trees is not None:
            return None, self.trees.predict_proba(features)
        proba = self.final_step.predict_proba(features)
        return (None if self.labels_are_argmax else self.final_step.predict(features)), proba


def _compile_pipeline(model: Any, schema: InputSchema, labels_are_argmax: bool) -> _FastPipeline | None:
    """The fast equivalent of a fitted ``Pipeline([DateParts, ColumnTransformer, classifier])``, or None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if type(model) is not Pipeline or len(model.steps) != 3:
        return None
    dates, columns, final = (step for _, step in model.steps)
    types = {c.name: c.type for c in schema.columns}
    date_columns = tuple(dates.date_columns or ())
    if type(dates) is not DateParts or any(types.get(name) != "datetime" for name in date_columns):
        return None
    if type(columns) is not ColumnTransformer or getattr(columns, "_sklearn_output_config", {}).get("transform"):
        return None
    blocks = []
    for _, transformer, selection in columns.transformers_:
        if isinstance(transformer, str):
            if transformer == "drop":
                continue
            return None  # passthrough
        if not isinstance(selection, list) or not all(isinstance(name, str) for name in selection):
            return None
        if not selection:
            continue  # sklearn skips empty selections
        fitted = [step for _, step in transformer.steps] if type(transformer) is Pipeline else [transformer]
        steps = [_compile_step(step) for step in fitted]
        if any(step is None for step in steps):
            return None
        blocks.append((tuple(selection), tuple(steps)))
    trees = _Trees.of(final) if labels_are_argmax else None
    return _FastPipeline(date_columns, tuple(blocks), trees, final, labels_are_argmax)


def _verification_rows(example_rows: list[dict[str, Any]], schema: InputSchema) -> list[dict[str, Any]]:
    """The input example plus, from its first row, each column missing in turn and each text column unseen."""
    variants = [dict(row) for row in example_rows]
    first = example_rows[0]
    for column in schema.columns:
        variants.append({**first, column.name: None})
        if column.type == "string":
            variants.append({**first, column.name: "__never_seen_category__"})
    variants.append({name: None for name in first})
    return variants


def load_model_version(client: Any, tracking_uri: str, name: str, version: str, alias: str) -> LoadedModel:
    """Download, unpickle and warm up one registered version. Raises on any problem; nothing is half-applied."""
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.models import Model

    model_version = client.get_model_version(name, version)
    artifact_uri = client.get_model_version_download_uri(name, version)
    # A private local copy pinned to this version: the alias may move meanwhile, and the process-global MLflow
    # tracking URI is not involved (several apps with different registries can live in one process).
    with tempfile.TemporaryDirectory(prefix="mlpipeline-serving-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri)
        meta = Model.load(local)
        schema = InputSchema.from_signature(meta.signature)
        model = mlflow.sklearn.load_model(local)
        try:
            example = meta.load_input_example(local)
        except Exception as exc:  # an unreadable example should not block an otherwise good model
            log.warning("model %s version %s: could not read the input example (%s)", name, version, exc)
            example = None
    if not hasattr(model, "predict_proba"):
        raise ValueError(f"model {name} version {version} has no predict_proba")
    classes = tuple(getattr(model, "classes_", ()))
    if len(classes) < 2:
        raise ValueError(f"model {name} version {version} does not expose at least two classes_")

    metrics: dict[str, float | None] = {}
    tags: dict[str, str] = dict(model_version.tags or {})
    run_id = model_version.run_id or None
    if run_id:
        try:
            run = client.get_run(run_id)
            # NaN metrics (e.g. roc_auc of a one-class holdout) are not valid JSON: report them as null.
            metrics = {k: (v if math.isfinite(v) else None) for k, v in run.data.metrics.items()}
            tags = {**run.data.tags, **tags}
        except Exception as exc:  # metadata is informative only; the model itself is loaded
            log.warning("model %s version %s: could not read training run %s (%s)", name, version, run_id, exc)
    # The positive class: an explicit positive_label tag if the trainer set one, else sklearn's convention (the last
    # of the sorted classes, i.e. 1 / True).
    positive_index = len(classes) - 1
    wanted = tags.get("positive_label")
    if wanted is not None:
        matches = [i for i, c in enumerate(classes) if str(_plain(c)) == wanted]
        positive_index = matches[0] if matches else positive_index

    preprocess, final_step, labels_are_argmax = _prediction_plan(model)
    loaded = LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        run_id=run_id,
        model=model,
        schema=schema,
        classes=classes,
        positive_index=positive_index,
        metrics=metrics,
        trained_at=tags.get("trained_at"),
        data_fingerprint=tags.get("data_sha256"),
        source=model_version.source,
        loaded_at=_utc_now(),
        preprocess=preprocess,
        final_step=final_step,
        labels_are_argmax=labels_are_argmax,
    )
    if example is not None:
        # Warm-up: the version must answer a real request through our own input path before it may serve.
        try:
            rows = example.to_dict(orient="records") if isinstance(example, pd.DataFrame) else None
        except Exception:
            rows = None
        if rows:
            try:
                frame = schema.frame(rows)
            except InputError as exc:
                log.warning("model %s version %s: input example does not fit the signature (%s)", name, version, exc)
            else:
                loaded.predict(frame)
                fast = _verified_fast_path(loaded, rows, f"{name} version {version}")
                loaded = dataclasses.replace(loaded, fast=fast)
    return dataclasses.replace(loaded, loaded_at=_utc_now())


def _verified_fast_path(loaded: LoadedModel, example_rows: list[dict[str, Any]], what: str) -> _FastPipeline | None:
    """The small-request fast path, if it gives exactly the sklearn path's answers on the example and variants."""
    try:
        fast = _compile_pipeline(loaded.model, loaded.schema, loaded.labels_are_argmax)
        if fast is None:
            log.info("model %s: no fast path for this pipeline shape; every request uses scikit-learn", what)
            return None
        general = dataclasses.replace(loaded, fast=None)
        candidate = dataclasses.replace(loaded, fast=fast)
        for row in _verification_rows(example_rows, loaded.schema):
            if candidate.predict_rows([row]) != general.predict_rows([row]):
                log.warning("model %s: the fast path disagrees with scikit-learn on %s; not using it", what, row)
                return None
        batch = example_rows[:_FAST_PATH_MAX_ROWS]
        if candidate.predict_rows(batch) != general.predict_rows(batch):
            log.warning("model %s: the fast path disagrees with scikit-learn on the input example; not using it", what)
            return None
    except Exception as exc:  # an unexpected model detail must cost speed, never correctness or availability
        log.warning("model %s: fast path unavailable (%s: %s)", what, type(exc).__name__, exc)
        return None
    return fast


# --------------------------------------------------------------------------------------------------------------
# The server state: current model, reloads, polling, metrics.
# --------------------------------------------------------------------------------------------------------------


class ServingMetrics:
    """Prometheus metrics in a per-app registry (several apps can coexist in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mlpipeline_serving_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlpipeline_serving_request_latency_seconds",
            "HTTP request latency by endpoint.",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.predictions = Counter("mlpipeline_serving_predictions", "Rows predicted.", registry=self.registry)
        self.model_version = Gauge(
            "mlpipeline_serving_model_version", "Served model version (0 = none).", registry=self.registry
        )
        self.reloads = Counter(
            "mlpipeline_serving_model_reloads", "Model versions loaded and swapped in.", registry=self.registry
        )
        self.reload_failures = Counter(
            "mlpipeline_serving_model_reload_failures",
            "Failed attempts to read the alias or load a version.",
            registry=self.registry,
        )


class ModelServer:
    """Owns the served model reference and keeps it in step with the registry alias."""

    def __init__(self, *, tracking_uri: str, model_name: str, alias: str, poll_seconds: float) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.metrics = ServingMetrics()
        self.started_at = time.monotonic()
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        # Requests read this once per call; a reload replaces it with one assignment (atomic under the GIL).
        self._model: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_checked_at: str | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def _aliased_version(self) -> str | None:
        """The version the alias points at, or None if the model or the alias does not exist (yet)."""
        from mlflow.exceptions import MlflowException

        try:
            registered = self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = (registered.aliases or {}).get(self.alias)
        return None if version is None else str(version)

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s", message)
        self.last_error = message
        self.metrics.reload_failures.inc()

    def refresh(self, *, force: bool = False) -> bool:
        """Bring the served model in line with the alias. Returns False if that failed (the old model stays)."""
        with self._reload_lock:
            self.last_checked_at = _utc_now()
            current = self._model
            try:
                version = self._aliased_version()
            except Exception as exc:
                self._fail(f"could not read alias {self.alias!r} of {self.model_name!r}: {exc}")
                return False
            if version is None:
                # Nothing promoted (yet), or the alias was removed on purpose (e.g. a deploy rolled back a first
                # version): the registry is the source of truth, so serve nothing rather than an unapproved model.
                if current is not None:
                    log.warning(
                        "alias %r of %r is gone; unloading version %s", self.alias, self.model_name, current.version
                    )
                    self._model = None
                    self.metrics.model_version.set(0)
                self.last_error = None
                return True
            if current is not None and current.version == version and not force:
                self.last_error = None
                return True
            started = time.perf_counter()
            try:
                loaded = load_model_version(self._client, self.tracking_uri, self.model_name, version, self.alias)
            except Exception as exc:
                keeping = f"; still serving version {current.version}" if current else ""
                self._fail(f"loading {self.model_name} version {version} failed: {type(exc).__name__}: {exc}{keeping}")
                return False
            self._model = loaded  # the swap
            self.last_error = None
            self.metrics.reloads.inc()
            with contextlib.suppress(ValueError):
                self.metrics.model_version.set(float(loaded.version))
            log.info(
                "serving %s version %s (loaded in %.2f s)", self.model_name, version, time.perf_counter() - started
            )
            return True

    def start_polling(self) -> None:
        if self._poller is not None or self.poll_seconds <= 0:
            return
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name=f"model-poller-{self.model_name}", daemon=True)
        self._poller.start()

    def stop_polling(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
            self._poller = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the poller must never die; refresh() already records expected failures
                log.exception("unexpected error while polling the model registry")

    def health(self) -> tuple[int, dict[str, Any]]:
        model = self._model
        body: dict[str, Any] = {
            "model_name": self.model_name,
            "alias": self.alias,
            "last_error": self.last_error,
            "last_checked_at": self.last_checked_at,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
        }
        if model is None:
            return 503, {"status": "no_model", "model_version": None, **body}
        status = "degraded" if self.last_error else "ok"
        return 200, {"status": status, "model_version": model.version, "loaded_at": model.loaded_at, **body}

    def model_body(self) -> tuple[int, dict[str, Any]]:
        model = self._model
        if model is None:
            return 503, {
                "status": "no_model",
                "name": self.model_name,
                "alias": self.alias,
                "version": None,
                "detail": f"no version of {self.model_name!r} is loaded (alias {self.alias!r})",
                "last_error": self.last_error,
            }
        return 200, {
            "status": "degraded" if self.last_error else "ok",
            **model.describe(),
            "last_error": self.last_error,
        }


class _MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): request count by endpoint/status, and latency."""

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Unknown paths share one label so scanners cannot blow up the label cardinality.
        endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class _FastJSONResponse(JSONResponse):
    # Skips FastAPI's jsonable_encoder walk (slow on 10k-float lists); content is plain JSON types already.
    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return _FastJSONResponse({"detail": detail, **extra}, status_code=status)


_PREDICT_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["rows"],
                    "properties": {
                        "rows": {
                            "type": "array",
                            "items": {"type": "object", "additionalProperties": True},
                            "description": "Feature rows; every input column of the model, null for missing.",
                        }
                    },
                }
            }
        },
    }
}


def create_app(
    *,
    tracking_uri: str,
    model_name: str,
    alias: str = DEFAULT_ALIAS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> FastAPI:
    """Build the server app. The first load happens at startup (lifespan), then the alias is polled."""
    server = ModelServer(tracking_uri=tracking_uri, model_name=model_name, alias=alias, poll_seconds=poll_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A missing champion or an unreachable registry must not stop the server: it answers 503 until it can load.
        await run_in_threadpool(server.refresh)
        server.start_polling()
        try:
            yield
        finally:
            await run_in_threadpool(server.stop_polling)

    app = FastAPI(title="mlpipeline model server", version="1", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(_MetricsMiddleware, metrics=server.metrics)

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = server.health()
        return _FastJSONResponse(body, status_code=status)

    @app.get("/model")
    async def model_info() -> JSONResponse:
        status, body = server.model_body()
        return _FastJSONResponse(body, status_code=status)

    @app.post("/reload")
    def reload(force: bool = False) -> JSONResponse:
        # Sync endpoint: FastAPI runs it in the thread pool, so loading does not block other requests.
        ok = server.refresh(force=force)
        status, body = server.model_body()
        return _FastJSONResponse(body, status_code=status if ok else 503)

    @app.post("/predict", openapi_extra=_PREDICT_BODY_SCHEMA)
    async def predict(request: Request) -> JSONResponse:
        model = server.model  # read the reference once: a concurrent swap cannot change it mid-request
        if model is None:
            return _error(503, f"no model loaded for {model_name!r} (alias {alias!r}); try again later")
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(422, f"request body is not valid JSON: {exc}")
        rows = payload.get("rows") if isinstance(payload, dict) else None
        if not isinstance(rows, list):
            return _error(422, 'request body must be an object {"rows": [ {column: value, ...}, ... ]}')
        if not rows:
            return _error(422, "rows is empty; send at least one row")
        if len(rows) > max_rows:
            return _error(413, f"too many rows: {len(rows)} > {max_rows}; split the request")

        def run() -> tuple[list[Any], list[float]]:
            return model.predict_rows(rows)

        try:
            if len(rows) <= _INLINE_ROWS:
                predictions, probabilities = run()
            else:
                predictions, probabilities = await run_in_threadpool(run)
        except InputError as exc:
            return _error(422, f"invalid input: {exc}", errors=exc.errors, error_count=exc.total)
        server.metrics.predictions.inc(len(rows))
        return _FastJSONResponse(
            {
                "model_name": model.name,
                "model_version": model.version,
                "predictions": predictions,
                "probabilities": probabilities,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory mlpipeline.serving:app_from_env``."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not tracking_uri:
        # Failing loudly beats silently creating an empty local store and answering 503 forever.
        raise RuntimeError("MLFLOW_TRACKING_URI is not set; point it at the MLflow tracking/registry store")
    return create_app(
        tracking_uri=tracking_uri,
        model_name=os.environ.get("MLPIPELINE_MODEL_NAME") or DEFAULT_MODEL_NAME,
        alias=os.environ.get("MLPIPELINE_MODEL_ALIAS") or DEFAULT_ALIAS,
        poll_seconds=_env_float("MLPIPELINE_POLL_SECONDS", DEFAULT_POLL_SECONDS),
    )


# --------------------------------------------------------------------------------------------------------------
# Running a server: in the foreground (CLI) or in a background thread (tests, demos).
# --------------------------------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that reports once it is started (after the lifespan, i.e. the first model load)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], object]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_started()


class ServerThread:
    """Run an app with uvicorn on a background thread; ``port=0`` picks a free port. Use as a context manager."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self._sock = _bind(host, port)
        self.url = _url(self._sock)
        self._started = threading.Event()
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False)
        self._server = _AnnouncingServer(config, self._started.set)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.url}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # SystemExit on a failed startup included
            self._error = exc
            self._started.set()

    def start(self, timeout: float = 60.0) -> str:
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"server at {self.url} did not start: {self._error!r}")
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in the background for the duration of the block; yields the base URL."""
    with ServerThread(app, host, port) as server:
        yield server.url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed when ready)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    parser.add_argument("--model-name", default=None, help="default: $MLPIPELINE_MODEL_NAME or churn_classifier")
    parser.add_argument("--alias", default=None, help="default: $MLPIPELINE_MODEL_ALIAS or champion")
    parser.add_argument("--poll-seconds", type=float, default=None, help="default: $MLPIPELINE_POLL_SECONDS or 10")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {
        "MLFLOW_TRACKING_URI": args.tracking_uri,
        "MLPIPELINE_MODEL_NAME": args.model_name,
        "MLPIPELINE_MODEL_ALIAS": args.alias,
        "MLPIPELINE_POLL_SECONDS": None if args.poll_seconds is None else str(args.poll_seconds),
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    try:
        app = app_from_env()
    except (RuntimeError, ValueError) as exc:
        parser.error(str(exc))
    sock = _bind(args.host, args.port)
    url = _url(sock)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="on")
    server = _AnnouncingServer(config, lambda: print(f"serving {url}", flush=True))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
