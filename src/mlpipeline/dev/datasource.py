"""The bundled data source: a synthetic customer-churn dataset and a small HTTP service that serves it.

It is the demo's default source and the tests' fixture, so it behaves like a real (imperfect) upstream:

* :func:`generate_churn_dataset` builds a realistic, learnable binary-classification table with the columns of
  :func:`mlpipeline.config.default_schema`, plus knobs for dirty data (blank cells, malformed rows, exact
  duplicates) and distribution drift. It is vectorised (numpy + Arrow strings): ~1 s per million rows.
* :func:`serialize` turns a frame into ``csv`` / ``jsonl`` / ``parquet`` bytes.
* :class:`DataSourceServer` serves the data over HTTP (whole files with ETag/Last-Modified and 304s, plus two
  paginated JSON APIs), with runtime switches for failures, delays, drift and version bumps.

Run it standalone with ``python -m mlpipeline.dev.datasource --port 8765``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import io
import json
import logging
import math
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------------------

ID_COLUMN = "customer_id"
TARGET_COLUMN = "churned"
# Same order as default_schema().columns; a test keeps the two in sync.
FEATURE_COLUMNS: tuple[str, ...] = (
    "age",
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "support_tickets",
    "data_usage_gb",
    "contract",
    "payment_method",
    "internet_service",
    "region",
    "paperless_billing",
    "signup_date",
)
COLUMNS: tuple[str, ...] = (ID_COLUMN, *FEATURE_COLUMNS, TARGET_COLUMN)

CONTRACTS = ("month-to-month", "one_year", "two_year")
PAYMENT_METHODS = ("credit_card", "bank_transfer", "electronic_check", "mailed_check")
INTERNET_SERVICES = ("dsl", "fiber", "none")
REGIONS = ("north", "south", "east", "west")
BOOLEANS = ("false", "true")

_INTEGER_COLUMNS = ("age", "tenure_months", "support_tickets")
_FLOAT_COLUMNS = ("monthly_charges", "total_charges", "data_usage_gb")
_NUMERIC_COLUMNS = _INTEGER_COLUMNS + _FLOAT_COLUMNS
_CATEGORIES: dict[str, tuple[str, ...]] = {
    "contract": CONTRACTS,
    "payment_method": PAYMENT_METHODS,
    "internet_service": INTERNET_SERVICES,
    "region": REGIONS,
    "paperless_billing": BOOLEANS,
}
# Values no schema-validating ETL can accept. None of them is in pandas' default NA list ("n/a", "NA", "null"
# and friends would silently become "missing", which is allowed, instead of "malformed").
_BAD_NUMBERS = ("abc", "twelve", "#REF!", "12..5", "1O5")
_BAD_CATEGORIES: dict[str, tuple[str, ...]] = {
    "contract": ("unknown_plan", "monthly??"),
    "payment_method": ("bitcoin", "barter"),
    "internet_service": ("satellite", "carrier_pigeon"),
    "region": ("atlantis", "mars"),
    "paperless_billing": ("maybe", "sometimes"),
}
_BAD_DATES = ("not-a-date", "2024-13-45", "yesterday", "31/02/2023")
_REFERENCE_DATE = np.datetime64("2025-06-30", "D")  # fixed, so the data does not depend on the clock

# Kinds of malformation; each malformed row gets exactly one.
_MALFORMED_KINDS = (
    "text_in_numeric",
    "negative_age",
    "age_too_high",
    "negative_charges",
    "unknown_category",
    "bad_date",
    "missing_target",
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _check_rate(name: str, value: float, upper: float = 1.0) -> float:
    value = float(value)
    if not (0.0 <= value <= upper) or math.isnan(value):
        raise ValueError(f"{name} must be between 0 and {upper}, got {value}")
    return value


def _arrow_strings(array: pa.Array) -> pd.arrays.ArrowStringArray:
    # Arrow-backed strings: no per-value Python objects, so 10 M rows stay cheap to build and serialise.
    return pd.arrays.ArrowStringArray(pa.chunked_array([array.cast(pa.string())]))


def _choice_rows(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Distinct row positions, about ``rate * n`` of them (binomial count, like real dirt)."""
    if n == 0 or rate <= 0:
        return np.empty(0, dtype=np.int64)
    count = min(int(rng.binomial(n, rate)), n)
    return np.sort(rng.choice(n, size=count, replace=False))


def _customer_ids(numbers: np.ndarray, width: int) -> pa.Array:
    """ "C00000042"-style ids for the given customer numbers."""
    text = pc.cast(pa.array(numbers.astype(np.int64)), pa.string())
    return pc.binary_join_element_wise("C", pc.utf8_lpad(text, width, "0"), "")


def generate_churn_dataset(
    rows: int,
    seed: int = 7,
    *,
    drift: bool = False,
    missing_rate: float = 0.02,
    malformed_rate: float = 0.005,
    duplicate_rate: float = 0.01,
) -> pd.DataFrame:
    """A customer-churn table: ``customer_id``, the 12 features of ``default_schema()`` and ``churned`` (0/1).

    Clean rows respect the schema's ranges and categories; ``churned`` follows a logistic model of contract,
    tenure, support tickets, charges, fiber, electronic check, paperless billing and age (plus Bernoulli noise),
    so a gradient-boosting model reaches ~0.83 accuracy against a ~0.70 majority baseline; churn rate ~30 %.

    Dirty data: about ``missing_rate`` of feature cells are blank (never the target of a clean row); about
    ``malformed_rate`` of rows carry one invalid value (text in a numeric column, out-of-range number, unknown
    category, unparseable date or missing target); ``duplicate_rate`` of the rows are exact copies of others.
    ``drift=True`` shifts distributions: younger customers (age PSI ~0.9), +30 % monthly charges (PSI ~0.6),
    more month-to-month contracts (PSI ~0.3), +25 % data usage (PSI ~0.05); the churn model itself is unchanged,
    so the churn rate rises to ~45 %.

    dtypes: clean integer columns and the target are ``Int64``, clean float columns ``float64``; text columns,
    and any numeric column that received a malformed text value, are Arrow-backed ``string`` (missing = NA).
    The output is a pure function of the arguments.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    missing_rate = _check_rate("missing_rate", missing_rate)
    malformed_rate = _check_rate("malformed_rate", malformed_rate)
    duplicate_rate = _check_rate("duplicate_rate", duplicate_rate, upper=0.5)
    rng = np.random.default_rng(seed)

    n_duplicates = round(rows * duplicate_rate)
    n = rows - n_duplicates  # distinct rows; the duplicates are copies of some of them

    # --- clean features ----------------------------------------------------------------------------------
    contract = rng.choice(3, size=n, p=[0.78, 0.13, 0.09] if drift else [0.52, 0.24, 0.24])
    tenure_mean = np.array([11.0, 30.0, 46.0])[contract]
    tenure = np.minimum(np.floor(rng.gamma(1.6, tenure_mean / 1.6)), 72).astype(np.int64)
    age = np.clip(np.rint(rng.normal(34.0, 12.0, n) if drift else rng.normal(46.0, 15.0, n)), 18, 90).astype(np.int64)
    internet = rng.choice(3, size=n, p=[0.36, 0.44, 0.20])
    base_charges = np.maximum(np.array([52.0, 84.0, 24.0])[internet] + rng.normal(0.0, 11.0, n), 15.0)
    monthly = np.round(base_charges * (1.3 if drift else 1.0), 2)
    total = np.round(monthly * tenure * rng.uniform(0.92, 1.02, n), 2)
    fiber = internet == 1
    month_to_month = contract == 0
    tickets = rng.poisson(0.7 + 0.6 * fiber + 0.5 * month_to_month).astype(np.int64)
    usage_scale = np.array([35.0, 90.0, 1.5])[internet] * (1.25 if drift else 1.0)
    usage = np.round(rng.gamma(2.0, usage_scale), 2)
    payment = rng.choice(4, size=n, p=[0.24, 0.22, 0.34, 0.20])
    region = rng.integers(0, 4, n)
    paperless = (rng.random(n) < 0.6).astype(np.int64)
    signup_days = tenure * 30 + rng.integers(0, 30, n)

    # --- target: a fixed "true" churn model; drift changes who the customers are, not the model -------------
    logit = 1.3 * (
        -2.2
        + 1.2 * month_to_month
        - 0.9 * (contract == 2)
        - 0.04 * tenure
        + 0.6 * (tenure < 6)
        + 0.38 * tickets
        + 0.02 * (base_charges - 60.0)
        + 0.7 * fiber
        + 0.6 * (payment == 2)
        + 0.3 * paperless
        - 0.015 * (age - 45)
        + 0.15 * (region == 1)
    )
    churned = (rng.random(n) < _sigmoid(logit)).astype(np.int64)

    # --- blank cells ---------------------------------------------------------------------------------------
    missing = {name: _choice_rows(rng, n, missing_rate) for name in FEATURE_COLUMNS}

    # --- malformed rows: positions, kind and the value for each --------------------------------------------
    bad_rows = _choice_rows(rng, n, malformed_rate)
    kinds = rng.integers(0, len(_MALFORMED_KINDS), bad_rows.size)
    picks = rng.integers(0, 1 << 30, (bad_rows.size, 2))  # which column / which bad value
    ints = {"age": age, "tenure_months": tenure, "support_tickets": tickets}
    floats = {"monthly_charges": monthly, "total_charges": total, "data_usage_gb": usage}
    int_missing = {name: np.zeros(n, dtype=bool) for name in _INTEGER_COLUMNS}
    for name in _INTEGER_COLUMNS:
        int_missing[name][missing[name]] = True
    for name in _FLOAT_COLUMNS:
        floats[name] = floats[name].astype(np.float64)
        floats[name][missing[name]] = np.nan
    text_overrides: dict[str, tuple[list[int], list[str]]] = {}
    target_missing = np.zeros(n, dtype=bool)

    def override(column: str, row: int, value: str) -> None:
        positions, values = text_overrides.setdefault(column, ([], []))
        positions.append(row)
        values.append(value)

    for row, kind_index, (pick_column, pick_value) in zip(
        bad_rows.tolist(), kinds.tolist(), picks.tolist(), strict=True
    ):
        kind = _MALFORMED_KINDS[kind_index]
        if kind == "text_in_numeric":
            override(_NUMERIC_COLUMNS[pick_column % 6], row, _BAD_NUMBERS[pick_value % len(_BAD_NUMBERS)])
        elif kind in ("negative_age", "age_too_high"):
            ints["age"][row] = -(1 + pick_value % 60) if kind == "negative_age" else 101 + pick_value % 150
            int_missing["age"][row] = False
        elif kind == "negative_charges":
            floats["monthly_charges"][row] = -round(5 + (pick_value % 9000) / 100, 2)
        elif kind == "unknown_category":
            column = tuple(_BAD_CATEGORIES)[pick_column % len(_BAD_CATEGORIES)]
            override(column, row, _BAD_CATEGORIES[column][pick_value % 2])
        elif kind == "bad_date":
            override("signup_date", row, _BAD_DATES[pick_value % len(_BAD_DATES)])
        else:  # missing_target
            target_missing[row] = True

    # --- exact duplicates: copies of distinct random rows, inserted at random positions ----------------------
    # Done on the cheap numeric arrays, before any strings exist, so 10 M rows stay affordable.
    order = np.arange(n)
    if n_duplicates:
        sources = rng.choice(n, size=n_duplicates, replace=n_duplicates > n)
        order = np.insert(order, np.sort(rng.integers(0, n + 1, n_duplicates)), sources)

    # --- assemble columns ----------------------------------------------------------------------------------
    def blank(name: str) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[missing[name]] = True
        return mask[order]

    def with_overrides(name: str, array: pa.Array) -> pd.arrays.ArrowStringArray:
        positions, values = text_overrides[name]
        which = np.full(n, -1, dtype=np.int64)  # base row -> index into values
        which[positions] = np.arange(len(positions))
        which = which[order]
        mask = which >= 0
        replaced = pc.replace_with_mask(
            array.cast(pa.string()), pa.array(mask), pa.array(np.array(values)[which[mask]])
        )
        return _arrow_strings(replaced)

    codes = {
        "contract": contract,
        "payment_method": payment,
        "internet_service": internet,
        "region": region,
        "paperless_billing": paperless,
    }
    columns: dict[str, Any] = {ID_COLUMN: _arrow_strings(_customer_ids(order + 1, max(8, len(str(n)))))}
    for name in FEATURE_COLUMNS:
        if name in ints:
            values: Any = pd.arrays.IntegerArray(ints[name][order], int_missing[name][order])
        elif name in floats:
            values = floats[name][order]
        elif name == "signup_date":
            dates = _REFERENCE_DATE - signup_days[order].astype("timedelta64[D]")
            values = pa.array(dates, mask=blank(name)).cast(pa.string())
        else:
            values = pa.array(_CATEGORIES[name]).take(pa.array(codes[name][order], mask=blank(name)))
        if name in text_overrides:
            # A text value landed in this column: the whole column becomes text (as it would in a CSV).
            values = with_overrides(name, pa.array(values, from_pandas=True))
        elif isinstance(values, pa.Array):
            values = _arrow_strings(values)
        columns[name] = values
    columns[TARGET_COLUMN] = pd.arrays.IntegerArray(churned[order], target_missing[order])
    return pd.DataFrame(columns)


# ------------------------------------------------------------------------------------------------------------
# Serialisation
# ------------------------------------------------------------------------------------------------------------

FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
CONTENT_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


_EMPTY = pa.scalar("", pa.large_string())
_QUOTE = pa.scalar('"', pa.large_string())
_NULL = pa.scalar("null", pa.large_string())


def to_arrow_table(frame: pd.DataFrame) -> pa.Table:
    """Arrow table of ``frame``; object columns (mixed numbers and text) are stored as text."""
    prepared = frame.copy(deep=False)
    for name in prepared.columns:
        if prepared[name].dtype == object:
            try:  # homogeneous object columns (str, bool, ...) keep their type
                pa.array(prepared[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                prepared[name] = prepared[name].astype("string")
    return pa.Table.from_pandas(prepared, preserve_index=False)


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    # Arrow's writer is ~10x faster than DataFrame.to_csv; it quotes text values (valid RFC 4180 CSV).
    sink = io.BytesIO()
    pa_csv.write_csv(to_arrow_table(frame), sink, pa_csv.WriteOptions(quoting_style="needed"))
    return sink.getvalue()


def _json_values(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Each value of ``column`` as JSON text (``null`` for missing), or None if the fast path can't do it."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(pa.large_string()), pa.large_string()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column.cast(pa.large_string())
        if pc.any(pc.match_substring_regex(text, r'[\x00-\x1f"\\]')).as_py():  # rare: only then pay for escaping
            if pc.any(pc.match_substring_regex(text, r"[\x00-\x1f]")).as_py():
                return None  # control characters need \uXXXX escapes: leave those frames to pandas
            text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
        text = pc.binary_join_element_wise(_QUOTE, text, _QUOTE, _EMPTY)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = column.cast(pa.large_string())
    elif pa.types.is_floating(kind):
        finite = pc.if_else(pc.is_finite(column), column, pa.scalar(None, kind))  # JSON has no NaN/inf
        text = finite.cast(pa.large_string())
    elif pa.types.is_null(kind):
        text = pa.chunked_array([pa.nulls(len(column), pa.large_string())])
    else:
        return None
    return pc.fill_null(text, _NULL)


def json_objects(frame: pd.DataFrame, suffix: str = "") -> pa.Array | None:
    """One JSON object (as text, plus ``suffix``) per row, built column-wise in Arrow; None when only pandas can."""
    table = to_arrow_table(frame)
    if table.num_columns == 0:
        return None
    # One join over [`{"a":`, a, `,"b":`, b, ..., `}`]: the keys carry the punctuation.
    parts: list[Any] = []
    for position, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        values = _json_values(column)
        if values is None:
            return None
        key = ("{" if position == 0 else ",") + json.dumps(str(name), ensure_ascii=False) + ":"
        parts += [pa.scalar(key, pa.large_string()), values]
    objects = pc.binary_join_element_wise(*parts, pa.scalar("}" + suffix, pa.large_string()), _EMPTY)
    return objects.combine_chunks() if isinstance(objects, pa.ChunkedArray) else objects


def _concatenated(array: pa.Array) -> bytes:
    """All values of a large_string array back to back, straight from its data buffer."""
    if len(array) == 0:
        return b""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)
    start, end = int(offsets[array.offset]), int(offsets[array.offset + len(array)])
    return bytes(memoryview(array.buffers()[2])[start:end])


def to_jsonl_bytes(frame: pd.DataFrame) -> bytes:
    """One JSON object per line; missing values are ``null``."""
    if frame.empty:
        return b""
    objects = json_objects(frame, suffix="\n")
    if objects is None:
        text = frame.to_json(orient="records", lines=True, force_ascii=False, date_format="iso")
        return (text if text.endswith("\n") else text + "\n").encode("utf-8")
    return _concatenated(objects)


def json_records(frame: pd.DataFrame) -> bytes:
    """The rows of ``frame`` as a JSON array of objects (missing values ``null``)."""
    if frame.empty:
        return b"[]"
    objects = json_objects(frame)
    if objects is None:
        return frame.to_json(orient="records", force_ascii=False, date_format="iso").encode("utf-8")
    return b"[" + b",".join(value.encode("utf-8") for value in objects.to_pylist()) + b"]"


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(to_arrow_table(frame), sink, compression="snappy")
    return sink.getvalue()


def serialize(frame: pd.DataFrame, fmt: str) -> bytes:
    """``frame`` as ``csv``, ``jsonl`` or ``parquet`` bytes."""
    writers: dict[str, Callable[[pd.DataFrame], bytes]] = {
        "csv": to_csv_bytes,
        "jsonl": to_jsonl_bytes,
        "parquet": to_parquet_bytes,
    }
    if fmt not in writers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return writers[fmt](frame)


# A CSV no parser should accept: an unbalanced quote that swallows the rest of the file, ragged rows and
# bytes that are not UTF-8.
BROKEN_CSV = (
    b"customer_id,age,tenure_months,contract,churned\n"
    b"C00000001,34,12,month-to-month,0\n"
    b'C00000002,45,"unterminated,two_year,1,extra,fields\n'
    b"C00000003,51,3,one_year,0,7,8,9\n"
    b"\xff\xfe\x00\x00garbage\x9c\x80,,\n"
)

_INDEX_HTML = b"""<!doctype html>
<html><head><title>churn data source</title></head>
<body><h1>Customer churn data source</h1>
<ul><li><a href="/data.csv">/data.csv</a></li><li><a href="/data.jsonl">/data.jsonl</a></li>
<li><a href="/data.parquet">/data.parquet</a></li><li><a href="/api/records">/api/records</a></li>
<li><a href="/api/pages">/api/pages</a></li><li><a href="/health">/health</a></li></ul></body></html>
"""

# ------------------------------------------------------------------------------------------------------------
# HTTP service
# ------------------------------------------------------------------------------------------------------------

MAX_ROWS = 20_000_000  # protects the server from accidental huge requests (10 M rows of CSV is ~1.2 GB)
MAX_PAGE_SIZE = 100_000
DEFAULT_PAGE_SIZE = 1000


class _Params(NamedTuple):
    rows: int
    seed: int
    drift: bool
    missing_rate: float
    malformed_rate: float
    duplicate_rate: float
    version: int

    @property
    def generation_seed(self) -> int:
        # Version 0 is exactly generate_churn_dataset(rows, seed); later versions are new, different content.
        if self.version == 0:
            return self.seed
        return int(np.random.SeedSequence([self.seed, self.version]).generate_state(1)[0])


class _BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class ServedRequest:
    """One request the server answered (for tests and debugging)."""

    method: str
    path: str  # path and query as sent
    status: int
    headers: dict[str, str] = field(default_factory=dict)


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _content_setting(name: str, check: Callable[[Any], Any]) -> property:
    """A live-switchable setting: changing it changes the content, so Last-Modified moves forward."""

    def getter(self: DataSourceServer) -> Any:
        return getattr(self, f"_{name}")

    def setter(self: DataSourceServer, value: Any) -> None:
        value = check(value)
        with self._lock:
            if getattr(self, f"_{name}", None) != value:
                setattr(self, f"_{name}", value)
                self._touch()

    return property(getter, setter)


def _seed(value: Any) -> int:
    value = int(value)
    if value < 0:
        raise ValueError(f"seed must be >= 0, got {value}")
    return value


def _positive_rows(value: Any) -> int:
    value = int(value)
    if not 0 <= value <= MAX_ROWS:
        raise ValueError(f"rows must be between 0 and {MAX_ROWS}, got {value}")
    return value


class DataSourceServer:
    """The churn dataset over HTTP, on a stdlib ``ThreadingHTTPServer`` in a daemon thread.

    Endpoints (GET, and HEAD for the same headers without a body):

    * ``/health`` -- ``{"status": "ok", ...}``; never delayed or failed.
    * ``/data.csv``, ``/data.jsonl``, ``/data.parquet`` -- the whole dataset, with ``ETag`` and
      ``Last-Modified``; ``If-None-Match`` / ``If-Modified-Since`` answer 304.
    * ``/api/records?page_size=N&cursor=C`` -- cursor pages:
      ``{"records": [...], "next_cursor": str|null, "next": url|null, "total": N, "page_size": N}``.
      The first page (no cursor) has an ETag and honours conditional requests. A cursor from an older version
      of the data answers 410.
    * ``/api/pages?page=N&page_size=M`` -- next-link pages: ``{"data": [...], "links": {"next": url|null,
      "self": url}, "meta": {...}}``; page 1 has an ETag.
    * ``/broken.csv`` -- a malformed CSV; ``/`` -- an HTML landing page (not data); anything else 404.

    Query parameters ``rows``, ``seed``, ``drift`` (1/0), ``missing_rate``, ``malformed_rate`` and
    ``duplicate_rate`` override the server's settings per request. Generated datasets and serialised bodies
    are cached per parameter tuple.

    Runtime switches (safe to set on the live object): ``drift``, ``missing_rate``, ``malformed_rate``,
    ``duplicate_rate``, ``rows``, ``seed``; ``delay_seconds`` (sleep before answering data requests);
    ``conditional`` (False: no ETag/Last-Modified and no 304s, like a naive server); ``chunked`` (True: data
    files are sent with chunked transfer encoding, without Content-Length); ``next_links`` (False:
    ``/api/records`` pages carry only ``next_cursor``, ``next`` is null, like cursor-only APIs); :meth:`fail_next`;
    :meth:`bump_version`.
    """

    drift = _content_setting("drift", bool)
    missing_rate = _content_setting("missing_rate", lambda v: _check_rate("missing_rate", v))
    malformed_rate = _content_setting("malformed_rate", lambda v: _check_rate("malformed_rate", v))
    duplicate_rate = _content_setting("duplicate_rate", lambda v: _check_rate("duplicate_rate", v, 0.5))
    rows = _content_setting("rows", _positive_rows)
    seed = _content_setting("seed", _seed)

    def __init__(
        self,
        rows: int = 5000,
        seed: int = 7,
        drift: bool = False,
        missing_rate: float = 0.02,
        malformed_rate: float = 0.005,
        duplicate_rate: float = 0.01,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_seconds: float = 0.0,
        cache_size: int = 8,
    ) -> None:
        self._lock = threading.RLock()
        self._modified = 0
        self._version = 0
        self.rows = rows
        self.seed = seed
        self.drift = drift
        self.missing_rate = missing_rate
        self.malformed_rate = malformed_rate
        self.duplicate_rate = duplicate_rate
        self._modified = int(time.time())  # the setters above moved it; start from "now"
        self.delay_seconds = float(delay_seconds)
        self.conditional = True
        self.chunked = False
        self.next_links = True
        self.requests: deque[ServedRequest] = deque(maxlen=10_000)  # bounded: the demo server runs for days
        self._failures: list[int] = []
        self._cache_size = cache_size
        self._frames: OrderedDict[_Params, pd.DataFrame] = OrderedDict()
        self._bodies: OrderedDict[tuple[_Params, str], bytes] = OrderedDict()
        self._generate_lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.source = self
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> DataSourceServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="datasource", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DataSourceServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- switches -------------------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 500) -> None:
        """The next ``n`` data requests (everything but /health) answer ``status``."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (4xx/5xx), got {status}")
        with self._lock:
            self._failures.extend([status] * n)

    def bump_version(self) -> int:
        """New content (a differently seeded dataset): new ETag and a later Last-Modified."""
        with self._lock:
            self._version += 1
            self._touch()
            return self._version

    @property
    def version(self) -> int:
        return self._version

    @property
    def last_modified(self) -> str:
        return _http_date(self._modified)

    @property
    def data_request_count(self) -> int:
        return sum(1 for r in self.requests if not r.path.startswith("/health"))

    def _touch(self) -> None:
        # Strictly later than before (HTTP dates have 1 s resolution), so If-Modified-Since sees the change.
        self._modified = max(int(time.time()), getattr(self, "_modified", 0) + 1)

    # --- data -------------------------------------------------------------------------------------------------
    def dataset(self, params: _Params | None = None) -> pd.DataFrame:
        """The dataset currently served (or for ``params``), from the cache."""
        params = params or self._default_params()
        with self._generate_lock:  # one generation at a time; concurrent requests wait for the cached result
            frame = self._frames.get(params)
            if frame is None:
                frame = generate_churn_dataset(
                    params.rows,
                    params.generation_seed,
                    drift=params.drift,
                    missing_rate=params.missing_rate,
                    malformed_rate=params.malformed_rate,
                    duplicate_rate=params.duplicate_rate,
                )
                self._frames[params] = frame
                while len(self._frames) > self._cache_size:
                    self._frames.popitem(last=False)
            else:
                self._frames.move_to_end(params)
            return frame

    def body(self, params: _Params, fmt: str) -> bytes:
        key = (params, fmt)
        with self._lock:
            cached = self._bodies.get(key)
        if cached is not None:
            return cached
        data = serialize(self.dataset(params), fmt)
        with self._lock:
            self._bodies[key] = data
            while len(self._bodies) > 2 * self._cache_size:
                self._bodies.popitem(last=False)
        return data

    def _default_params(self) -> _Params:
        with self._lock:
            return _Params(
                self._rows,
                self._seed,
                self._drift,
                self._missing_rate,
                self._malformed_rate,
                self._duplicate_rate,
                self._version,
            )

    def _params(self, query: dict[str, list[str]]) -> _Params:
        params = self._default_params()

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        try:
            updates: dict[str, Any] = {}
            if (value := one("rows")) is not None:
                updates["rows"] = _positive_rows(value)
            if (value := one("seed")) is not None:
                updates["seed"] = _seed(value)
            if (value := one("drift")) is not None:
                if value.lower() not in TRUE_TOKENS | FALSE_TOKENS:
                    raise ValueError(f"drift must be 1 or 0, got {value!r}")
                updates["drift"] = value.lower() in TRUE_TOKENS
            for name, upper in (("missing_rate", 1.0), ("malformed_rate", 1.0), ("duplicate_rate", 0.5)):
                if (value := one(name)) is not None:
                    updates[name] = _check_rate(name, float(value), upper)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        return params._replace(**updates)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _record(self, request: ServedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    source: DataSourceServer


def _etag(*parts: object) -> str:
    return '"' + hashlib.sha256(repr(parts).encode()).hexdigest()[:32] + '"'


def _encode_cursor(offset: int, tag: str) -> str:
    raw = json.dumps({"o": offset, "v": tag.strip('"')[:12]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        return int(payload["o"]), str(payload["v"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise _BadRequest(f"invalid cursor {cursor!r}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mlpipeline-datasource/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the demo inspect DataSourceServer.requests instead

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # --- plumbing -------------------------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        self._head = head
        self._status = 0
        source = self.server.source
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        try:
            if path == "/health":
                self._json(200, {"status": "ok", "rows": source.rows, "version": source.version})
                return
            routes: dict[str, Callable[[dict[str, list[str]]], None]] = {
                "/data.csv": lambda q: self._file("csv", q),
                "/data.jsonl": lambda q: self._file("jsonl", q),
                "/data.parquet": lambda q: self._file("parquet", q),
                "/api/records": self._records,
                "/api/pages": self._pages,
                "/broken.csv": lambda q: self._send(200, BROKEN_CSV, CONTENT_TYPES["csv"]),
                "/": lambda q: self._send(200, _INDEX_HTML, "text/html; charset=utf-8"),
                "/index.html": lambda q: self._send(200, _INDEX_HTML, "text/html; charset=utf-8"),
            }
            route = routes.get(path)
            if route is None:
                self._json(404, {"error": f"no such resource: {path}"})
                return
            if source.delay_seconds > 0:
                time.sleep(source.delay_seconds)
            failure = source._take_failure()
            if failure is not None:
                extra = {"Retry-After": "0"} if failure in (429, 503) else {}
                self._json(failure, {"error": f"injected failure {failure}"}, extra)
                return
            route(query)
        except _BadRequest as exc:
            self._json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. it hit its size limit)
        except Exception as exc:  # a bug must still produce an HTTP answer, not a dropped connection
            log.exception("error serving %s", self.path)
            if self._status == 0:  # nothing sent yet
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
            self.close_connection = True
        finally:
            headers = {k: v for k, v in self.headers.items() if k.lower().startswith("if-")}
            source._record(ServedRequest(self.command, self.path, self._status, headers))

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        chunked = self.server.source.chunked and status == 200 and content_type != "application/json"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self._head:
            return
        if not chunked:
            self.wfile.write(body)
            return
        step = 64 * 1024
        for start in range(0, len(body), step):
            chunk = body[start : start + step]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _validators(self, etag: str) -> dict[str, str]:
        source = self.server.source
        if not source.conditional:
            return {}
        return {"ETag": etag, "Last-Modified": source.last_modified, "Cache-Control": "no-cache"}

    def _not_modified(self, etag: str) -> bool:
        """Evaluate If-None-Match (wins when present, RFC 9110) or else If-Modified-Since; send 304 if met."""
        source = self.server.source
        if not source.conditional:
            return False
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            matched = "*" in tags or etag in tags
        else:
            since = self.headers.get("If-Modified-Since")
            try:
                matched = since is not None and source._modified <= email.utils.parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                matched = False  # unparseable dates are ignored, as the RFC says
        if matched:
            self._status = 304
            self.send_response(304)
            for name, value in self._validators(etag).items():
                self.send_header(name, value)
            self.end_headers()
        return matched

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def _page_size(self, query: dict[str, list[str]]) -> int:
        raw = (query.get("page_size") or [str(DEFAULT_PAGE_SIZE)])[-1]
        try:
            size = int(raw)
        except ValueError:
            raise _BadRequest(f"page_size must be an integer, got {raw!r}") from None
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise _BadRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {size}")
        return size

    def _link(self, path: str, query: dict[str, list[str]], **updates: str) -> str:
        merged = {k: v[-1] for k, v in query.items()}
        merged.update(updates)
        return f"{self._base_url()}{path}?{urlencode(merged)}"

    # --- endpoints ------------------------------------------------------------------------------------------
    def _file(self, fmt: str, query: dict[str, list[str]]) -> None:
        source = self.server.source
        params = source._params(query)
        etag = _etag(params, fmt)
        if self._not_modified(etag):
            return
        self._send(200, source.body(params, fmt), CONTENT_TYPES[fmt], self._validators(etag))

    def _records(self, query: dict[str, list[str]]) -> None:
        source = self.server.source
        params = source._params(query)
        size = self._page_size(query)
        tag = _etag(params, "records")
        cursor = (query.get("cursor") or [""])[-1]
        offset = 0
        if cursor:
            offset, cursor_tag = _decode_cursor(cursor)
            if cursor_tag != tag.strip('"')[:12]:
                self._json(410, {"error": "the dataset changed since this cursor was issued; start again"})
                return
        elif self._not_modified(_etag(params, "records", size)):
            return
        frame = source.dataset(params)
        total = len(frame)
        if not 0 <= offset <= total:
            raise _BadRequest(f"cursor offset {offset} is outside 0..{total}")
        end = min(offset + size, total)
        next_cursor = _encode_cursor(end, tag) if end < total else None
        next_url = None
        if next_cursor and source.next_links:
            next_url = self._link("/api/records", query, cursor=next_cursor, page_size=str(size))
        body = _envelope(
            "records",
            frame.iloc[offset:end],
            {"next_cursor": next_cursor, "next": next_url, "total": total, "page_size": size},
        )
        headers = self._validators(_etag(params, "records", size)) if not cursor else {}
        self._send(200, body, "application/json", headers)

    def _pages(self, query: dict[str, list[str]]) -> None:
        source = self.server.source
        params = source._params(query)
        size = self._page_size(query)
        raw_page = (query.get("page") or ["1"])[-1]
        try:
            page = int(raw_page)
        except ValueError:
            raise _BadRequest(f"page must be an integer, got {raw_page!r}") from None
        if page < 1:
            raise _BadRequest(f"page must be >= 1, got {page}")
        etag = _etag(params, "pages", size)
        if page == 1 and self._not_modified(etag):
            return
        frame = source.dataset(params)
        total = len(frame)
        start = min((page - 1) * size, total)
        end = min(start + size, total)
        has_next = end < total
        links = {
            "self": self._link("/api/pages", query, page=str(page), page_size=str(size)),
            "next": self._link("/api/pages", query, page=str(page + 1), page_size=str(size)) if has_next else None,
        }
        meta = {"page": page, "page_size": size, "total": total}
        body = _envelope("data", frame.iloc[start:end], {"links": links, "meta": meta})
        self._send(200, body, "application/json", self._validators(etag) if page == 1 else {})


def _envelope(field_name: str, rows: pd.DataFrame, extra: dict[str, Any]) -> bytes:
    # The records are built column-wise in Arrow; splice them into the envelope without re-parsing.
    rest = json.dumps(extra)[1:-1].encode()
    return b'{"' + field_name.encode() + b'": ' + json_records(rows) + b", " + rest + b"}"


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.dev.datasource", description="Serve the synthetic customer-churn dataset over HTTP."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift", action="store_true", help="serve drifted distributions")
    parser.add_argument("--missing-rate", type=float, default=0.02)
    parser.add_argument("--malformed-rate", type=float, default=0.005)
    parser.add_argument("--duplicate-rate", type=float, default=0.01)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        server = DataSourceServer(
            args.rows,
            args.seed,
            args.drift,
            args.missing_rate,
            args.malformed_rate,
            args.duplicate_rate,
            host=args.host,
            port=args.port,
        )
    except (OSError, ValueError) as exc:
        print(f"cannot start the data source: {exc}", file=sys.stderr)
        return 2
    with server:
        server.dataset()  # generate before announcing, so the first request is fast
        print(f"serving {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
