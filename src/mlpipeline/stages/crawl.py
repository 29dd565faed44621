"""Crawl stage: fetch the source over HTTP into an immutable raw snapshot ``<data_dir>/raw/<run>/``.

A snapshot holds the data file exactly as received (``data.csv`` / ``data.jsonl`` / ``data.parquet``; paginated
JSON APIs are stored as ``data.jsonl``, one record per line) and ``manifest.json`` describing it. Snapshots are
built under a temp name and renamed into place, so a snapshot directory is either complete or absent; re-running
the crawl for a run that already has a snapshot returns it without touching the network.

Per source URL the crawler remembers (in ``<data_dir>/state/crawl/<url hash>.json``) the ETag, Last-Modified,
sha256 and snapshot of the last successful crawl. It sends conditional requests; on ``304 Not Modified``, or when
the new body hashes the same as the previous one, the run's snapshot reuses the previous data file (hard link, or
copy) and is marked ``unchanged``.

Format selection (``config.crawl_format``):

* ``csv`` / ``jsonl`` / ``parquet``: one GET, body stored as received.
* ``json_api``: pages of JSON objects. ``page_size=<crawl_page_size>`` is added to the first URL (unless it is
  already there). The rows of a page are the list in ``crawl_records_field``, or, if the page has no such field,
  in ``data``; a page that is itself a JSON list is one final page. The next page is the ``next`` link (top-level
  ``next`` or ``links.next``, absolute or relative), else ``next_cursor`` sent back as the ``cursor`` query
  parameter; no link and no cursor ends the crawl. More than ``crawl_max_pages`` pages is an error. Only the first
  page is conditional: its ETag stands for the whole dataset.
* ``auto``: from the response's Content-Type, else the URL suffix, else the parquet magic bytes. JSON
  (``application/json`` / ``.json``) means ``json_api``; then the first URL is requested as given (its own
  pagination, if any, is followed) and ``crawl_page_size`` only applies to cursor-built URLs.

Failures raise :class:`CrawlError` with the URL, the HTTP status or network error, and what to check; nothing is
written. 5xx, 429, timeouts and connection errors are retried ``crawl_max_retries`` times with exponential backoff
(``crawl_backoff_seconds``, doubling; a numeric ``Retry-After`` is honoured up to 60 s); other 4xx fail at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mlpipeline import __version__
from mlpipeline.config import PipelineConfig
from mlpipeline.storage import DataLayout, atomic_directory, atomic_write_json, read_json, run_key

log = logging.getLogger(__name__)

RAW_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
DATA_FILES: dict[str, str] = {fmt: f"data.{fmt}" for fmt in RAW_FORMATS}
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_MAX_RETRY_AFTER = 60.0
_SCHEMA_SAMPLE_ROWS = 1000
_STALE_TEMP_SECONDS = 3600.0  # a crawl's temp dir untouched this long belongs to a dead worker

_CONTENT_TYPES: dict[str, str] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/comma-separated-values": "csv",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "application/json-lines": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/json": "json_api",
    "text/json": "json_api",
}
_SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json_api",
}


class CrawlError(RuntimeError):
    """The source could not be crawled; the message names the URL, what went wrong and what to check.

    ``retryable`` tells an orchestrator whether running the task again later may help: True when the source was
    down, slow or overloaded (retries exhausted) or changed mid-crawl; False when it answered with something
    unusable (4xx, malformed or oversized data), which a retry would only repeat.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class CrawlResult:
    """What the crawl produced; small and JSON-able (it travels through Airflow XCom)."""

    snapshot_dir: str
    data_path: str
    manifest_path: str
    format: str  # csv | jsonl | parquet: the stored file's format (json_api pages are stored as jsonl)
    rows: int
    bytes: int
    sha256: str
    unchanged: bool
    source_url: str
    pages: int
    reused_from: str | None = None  # snapshot whose data file was reused when unchanged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> CrawlResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})


# ------------------------------------------------------------------------------------------------------------
# Reading snapshots (also used by the ETL stage)
# ------------------------------------------------------------------------------------------------------------


def _text_value(value: Any) -> Any:
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


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_JSON_BLOCK = 16 << 20


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


def _count_rows(path: Path, fmt: str) -> int:
    """Rows of a snapshot, by parsing all of it (so a corrupt body fails here, not in the ETL)."""
    if fmt == "csv":
        with pd.read_csv(path, dtype=str, keep_default_na=True, chunksize=200_000) as reader:
            return sum(len(chunk) for chunk in reader)
    if fmt == "parquet":
        return sum(batch.num_rows for batch in pq.ParquetFile(path).iter_batches(200_000))
    try:  # jsonl: no need to build text frames just to count
        return sum(table.num_rows for table in _jsonl_tables(path))
    except _ARROW_ERRORS:
        return sum(len(chunk) for chunk in iter_raw(path, fmt, chunk_rows=200_000))


def _quick_schema(path: Path, fmt: str) -> dict[str, str]:
    """Column -> dtype as a reader would infer it from the first rows (informational)."""
    if fmt == "parquet":
        return {f.name: str(f.type) for f in pq.read_schema(path)}
    if fmt == "csv":
        sample = pd.read_csv(path, nrows=_SCHEMA_SAMPLE_ROWS)
    else:
        sample = pd.read_json(path, lines=True, nrows=_SCHEMA_SAMPLE_ROWS, convert_dates=False)
    return {str(name): str(dtype) for name, dtype in sample.dtypes.items()}


# ------------------------------------------------------------------------------------------------------------
# Format detection
# ------------------------------------------------------------------------------------------------------------


def detect_format(content_type: str | None, url: str, head: bytes = b"") -> str | None:
    """csv | jsonl | parquet | json_api from Content-Type, else URL suffix, else magic bytes; None if unknown."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in _CONTENT_TYPES:
        return _CONTENT_TYPES[media_type]
    if media_type.endswith("+json"):
        return "json_api"
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if head.startswith(b"PAR1"):
        return "parquet"
    return None


def _looks_like_html(content_type: str | None, head: bytes) -> bool:
    if (content_type or "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html"))


# ------------------------------------------------------------------------------------------------------------
# HTTP with retries and a byte budget
# ------------------------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Budget:
    """Bytes left of ``crawl_max_bytes`` over all requests of one crawl."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int, url: str) -> None:
        self.used += count
        if self.used > self.limit:
            raise CrawlError(
                f"{url}: the source is larger than crawl_max_bytes={self.limit} bytes (stopped after {self.used});"
                " raise crawl_max_bytes if this size is expected"
            )


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _describe_status(response: httpx.Response) -> str:
    text = f"HTTP {response.status_code}"
    return f"{text} {response.reason_phrase}" if response.reason_phrase else text


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


class _Http:
    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.client = httpx.Client(
            timeout=httpx.Timeout(config.crawl_timeout_seconds),
            follow_redirects=True,
            headers={"User-Agent": f"mlpipeline-crawler/{__version__}"},
        )
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    def get(self, url: str, headers: dict[str, str], consume: Callable[[httpx.Response], T]) -> T:
        """GET ``url`` and hand a 2xx/304 response to ``consume`` (streaming), retrying transient failures.

        ``consume`` must start from scratch on each call: a retry repeats the whole request.
        """
        attempts = self.config.crawl_max_retries + 1
        delay = self.config.crawl_backoff_seconds
        last_problem = ""
        for attempt in range(1, attempts + 1):
            wait = delay
            try:
                self.requests += 1
                with self.client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if 200 <= status < 300 or status == 304:
                        return consume(response)
                    if status == 429 or status >= 500:
                        last_problem = _describe_status(response)
                        wait = max(delay, _retry_after(response) or 0.0)
                    else:
                        snippet = response.read()[:300].decode("utf-8", "replace").strip()
                        hint = {
                            401: "the source needs credentials",
                            403: "access to the source is forbidden",
                            404: "check crawl_url",
                            410: "the resource is gone (for a paginated API: the data changed mid-crawl; retry)",
                        }.get(status, "check crawl_url and the source")
                        raise CrawlError(
                            f"GET {url} answered {_describe_status(response)}: {hint}"
                            + (f" (body: {snippet!r})" if snippet else ""),
                            retryable=status in (408, 410),
                        )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "network error"
                last_problem = f"{kind}: {type(exc).__name__}: {exc}".rstrip(": ")
            except httpx.HTTPError as exc:  # invalid URL, unsupported scheme, too many redirects, ...
                raise CrawlError(f"GET {url} failed: {type(exc).__name__}: {exc}; check crawl_url") from exc
            if attempt < attempts:
                log.warning("GET %s: %s (attempt %d/%d); retrying in %.2fs", url, last_problem, attempt, attempts, wait)
                time.sleep(wait)
                delay *= 2
        raise CrawlError(
            f"GET {url} failed after {attempts} attempt(s); last error: {last_problem}. Check that the source is up"
            " and reachable from this worker (crawl_url), or raise crawl_max_retries / crawl_timeout_seconds",
            retryable=True,
        )


# ------------------------------------------------------------------------------------------------------------
# The crawl
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Previous:
    """The last successful crawl of this URL, verified to still be on disk."""

    snapshot_dir: Path
    manifest: dict[str, Any]
    crawl_format: str

    @property
    def data_path(self) -> Path:
        return self.snapshot_dir / self.manifest["data_file"]

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.manifest.get("etag"):
            headers["If-None-Match"] = self.manifest["etag"]
        if self.manifest.get("last_modified"):
            headers["If-Modified-Since"] = self.manifest["last_modified"]
        return headers


@dataclass
class _Fetched:
    status: int
    not_modified: bool = False
    source_format: str | None = None  # csv | jsonl | parquet | json_api
    etag: str | None = None
    last_modified: str | None = None
    sha256: str = ""
    bytes: int = 0
    pages: int = 0
    page: Any = None  # auto mode: the first page, when the response turned out to be a JSON API


def _state_path(layout: DataLayout, url: str) -> Path:
    return layout.state / "crawl" / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"


def _load_previous(layout: DataLayout, config: PipelineConfig) -> _Previous | None:
    path = _state_path(layout, config.crawl_url)
    try:
        state = read_json(path)
        previous = _Previous(
            Path(state["snapshot_dir"]), read_json(Path(state["snapshot_dir"]) / MANIFEST), state["crawl_format"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no (usable) history: crawl unconditionally
    if previous.crawl_format != config.crawl_format or previous.manifest.get("source_url") != config.crawl_url:
        return None  # the history was made with other settings; its validators do not apply
    try:
        if previous.data_path.stat().st_size != previous.manifest["bytes"]:
            raise OSError("size differs from the manifest")
    except (OSError, KeyError) as exc:
        log.warning(
            "ignoring crawl history for %s: previous snapshot %s is unusable (%s)",
            config.crawl_url,
            previous.snapshot_dir,
            exc,
        )
        return None
    return previous


def _save_state(layout: DataLayout, config: PipelineConfig, snapshot: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(
        _state_path(layout, config.crawl_url),
        {
            "source_url": config.crawl_url,
            "crawl_format": config.crawl_format,
            "snapshot_dir": str(snapshot),
            "etag": manifest["etag"],
            "last_modified": manifest["last_modified"],
            "sha256": manifest["sha256"],
            "updated_at": manifest["fetched_at"],
        },
    )


def _link_or_copy(source: Path, target: Path) -> None:
    # Snapshots are immutable, so sharing the inode is safe and costs no space.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _result(snapshot: Path, manifest: dict[str, Any]) -> CrawlResult:
    return CrawlResult(
        snapshot_dir=str(snapshot),
        data_path=str(snapshot / manifest["data_file"]),
        manifest_path=str(snapshot / MANIFEST),
        format=manifest["format"],
        rows=int(manifest["rows"]),
        bytes=int(manifest["bytes"]),
        sha256=manifest["sha256"],
        unchanged=bool(manifest["unchanged"]),
        source_url=manifest["source_url"],
        pages=int(manifest["pages"]),
        reused_from=manifest.get("reused_from"),
    )


class _Crawler:
    def __init__(self, config: PipelineConfig, previous: _Previous | None, directory: Path) -> None:
        self.config = config
        self.previous = previous
        self.directory = directory
        self.http = _Http(config)
        self.budget = _Budget(config.crawl_max_bytes)

    # --- single-file formats --------------------------------------------------------------------------------
    def _stream_file(self, response: httpx.Response, url: str, fmt: str | None, fetched: _Fetched) -> None:
        """Stream the body to ``data.<fmt>``, hashing and counting as it arrives."""
        chunks = response.iter_bytes(_CHUNK)
        head = next(chunks, b"")
        content_type = response.headers.get("Content-Type")
        if _looks_like_html(content_type, head):
            raise CrawlError(f"{url} returned an HTML page (Content-Type {content_type!r}), not data; check crawl_url")
        if fmt is None:
            fmt = detect_format(content_type, url, head)
            if fmt is None:
                raise CrawlError(
                    f"{url}: cannot tell the data format (Content-Type {content_type!r}, no known file suffix);"
                    " set crawl_format to csv, jsonl, parquet or json_api"
                )
        self.budget.take(len(head), url)
        if fmt == "json_api":  # auto mode found JSON: it is the first page of an API
            fetched.source_format = "json_api"
            fetched.page = self._parse_page(head + b"".join(self._limited(chunks, url)), url)
            return
        fetched.source_format = fmt
        digest = hashlib.sha256()
        size = 0
        with open(self.directory / DATA_FILES[fmt], "wb") as handle:
            for chunk in itertools.chain([head], self._limited(chunks, url)):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        fetched.sha256, fetched.bytes = digest.hexdigest(), size

    def _limited(self, chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
        for chunk in chunks:
            self.budget.take(len(chunk), url)
            yield chunk

    def _first_response(self, response: httpx.Response, url: str, fmt: str | None) -> _Fetched:
        fetched = _Fetched(
            status=response.status_code,
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
        )
        if response.status_code == 304:
            fetched.not_modified = True
            return fetched
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.config.crawl_max_bytes:
            raise CrawlError(
                f"{url}: Content-Length {length} exceeds crawl_max_bytes={self.config.crawl_max_bytes};"
                " raise crawl_max_bytes if this size is expected"
            )
        self.budget.used = 0  # a retried attempt starts over
        self._stream_file(response, url, fmt, fetched)
        return fetched

    # --- paginated JSON API ---------------------------------------------------------------------------------
    def _parse_page(self, body: bytes, url: str) -> Any:
        if _looks_like_html(None, body[:256]):
            raise CrawlError(f"{url} returned an HTML page, not a JSON API page; check crawl_url")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CrawlError(f"{url}: the response is not valid JSON ({exc}); check crawl_url / crawl_format") from None

    def _read_page(self, url: str) -> Any:
        def consume(response: httpx.Response) -> Any:
            if response.status_code == 304:
                raise CrawlError(f"GET {url} answered 304 to an unconditional request")
            used = self.budget.used
            try:
                return self._parse_page(b"".join(self._limited(response.iter_bytes(_CHUNK), url)), url)
            except httpx.HTTPError:
                self.budget.used = used  # the retry re-reads this page
                raise

        return self.http.get(url, {}, consume)

    def _records(self, page: Any, url: str) -> list[Any]:
        if isinstance(page, list):
            return page
        if not isinstance(page, dict):
            raise CrawlError(f"{url}: a JSON API page must be an object or a list, got {type(page).__name__}")
        field = self.config.crawl_records_field
        records = page.get(field)
        if records is None and field != "data":
            records = page.get("data")
        if not isinstance(records, list):
            raise CrawlError(
                f"{url}: the page has no list of records in {field!r} (or 'data'); its fields are"
                f" {sorted(page)[:20]}; set crawl_records_field"
            )
        return records

    def _next_url(self, page: Any, url: str) -> str | None:
        if not isinstance(page, dict):
            return None
        link = page.get("next")
        if link is None and isinstance(page.get("links"), dict):
            link = page["links"].get("next")
        if isinstance(link, str) and link:
            return urljoin(url, link)
        cursor = page.get("next_cursor")
        if cursor not in (None, ""):
            return _with_query(url, cursor=str(cursor), page_size=str(self.config.crawl_page_size))
        return None

    def _paginate(self, first_url: str, first_page: Any) -> tuple[int, int, str]:
        """Write all pages' records to data.jsonl; returns (pages, bytes, sha256)."""
        digest = hashlib.sha256()
        size = 0
        pages = 0
        url, page = first_url, first_page
        seen = {first_url}
        with open(self.directory / DATA_FILES["jsonl"], "wb") as handle:
            while True:
                pages += 1
                for record in self._records(page, url):
                    if not isinstance(record, dict):
                        raise CrawlError(f"{url}: records must be JSON objects, got {type(record).__name__}")
                    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                    handle.write(line)
                    digest.update(line)
                    size += len(line)
                next_url = self._next_url(page, url)
                if next_url is None:
                    break
                if pages >= self.config.crawl_max_pages:
                    raise CrawlError(
                        f"{first_url}: more than crawl_max_pages={self.config.crawl_max_pages} pages; raise"
                        " crawl_max_pages or crawl_page_size if the source really is that large"
                    )
                if next_url in seen:
                    raise CrawlError(f"{first_url}: pagination loops back to {next_url}; the source is misbehaving")
                seen.add(next_url)
                url, page = next_url, self._read_page(next_url)
        return pages, size, digest.hexdigest()

    # --- driver ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        requested = config.crawl_format
        url = config.crawl_url
        if requested == "json_api" and "page_size" not in dict(parse_qsl(urlsplit(url).query)):
            url = _with_query(url, page_size=str(config.crawl_page_size))
        headers = self.previous.conditional_headers() if self.previous else {}
        file_format = None if requested in ("auto", "json_api") else requested

        if requested == "json_api":

            def consume(response: httpx.Response) -> _Fetched:
                fetched = _Fetched(response.status_code, response.status_code == 304, "json_api")
                fetched.etag, fetched.last_modified = (
                    response.headers.get("ETag"),
                    response.headers.get("Last-Modified"),
                )
                if not fetched.not_modified:
                    self.budget.used = 0
                    fetched.page = self._parse_page(b"".join(self._limited(response.iter_bytes(_CHUNK), url)), url)
                return fetched

            fetched = self.http.get(url, headers, consume)
        else:
            fetched = self.http.get(url, headers, lambda response: self._first_response(response, url, file_format))

        if fetched.not_modified:
            return self._reuse(fetched, url)
        if fetched.source_format == "json_api":
            fetched.pages, fetched.bytes, fetched.sha256 = self._paginate(url, fetched.page)
            stored = "jsonl"
        else:
            fetched.pages = 1
            stored = str(fetched.source_format)
        data_path = self.directory / DATA_FILES[stored]
        rows = self._validate(data_path, stored, url)
        manifest = self._manifest(fetched, url, stored, rows, _quick_schema(data_path, stored))
        previous = self.previous
        if previous and previous.manifest["sha256"] == fetched.sha256 and previous.manifest["format"] == stored:
            # Same bytes as last time: share the previous file instead of keeping a second copy.
            data_path.unlink()
            _link_or_copy(previous.data_path, data_path)
            manifest.update(unchanged=True, reused_from=str(previous.snapshot_dir))
        return manifest

    def _validate(self, path: Path, fmt: str, url: str) -> int:
        try:
            rows = _count_rows(path, fmt)
        except Exception as exc:  # any parser error means the body is not usable data
            problem = f"{type(exc).__name__}: {exc}".strip()[:500]
            raise CrawlError(
                f"{url}: the {fmt} body could not be parsed ({problem}); check that crawl_url serves {fmt}"
                " data (or set crawl_format)"
            ) from None
        if rows == 0:
            raise CrawlError(f"{url}: the source returned no data rows; check the source and crawl_url")
        return rows

    def _reuse(self, fetched: _Fetched, url: str) -> dict[str, Any]:
        previous = self.previous
        if previous is None:
            raise CrawlError(f"GET {url} answered 304 Not Modified, but this crawler sent no conditional request")
        old = previous.manifest
        _link_or_copy(previous.data_path, self.directory / old["data_file"])
        fetched.etag = fetched.etag or old.get("etag")
        fetched.last_modified = fetched.last_modified or old.get("last_modified")
        fetched.sha256, fetched.bytes, fetched.pages = old["sha256"], old["bytes"], old["pages"]
        fetched.source_format = old.get("source_format", old["format"])
        manifest = self._manifest(fetched, url, old["format"], old["rows"], old["schema"])
        manifest.update(unchanged=True, reused_from=str(previous.snapshot_dir))
        return manifest

    def _manifest(self, fetched: _Fetched, url: str, fmt: str, rows: int, schema: dict[str, str]) -> dict[str, Any]:
        return {
            "source_url": self.config.crawl_url,
            "request_url": url,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": fmt,
            "source_format": fetched.source_format,
            "crawl_format": self.config.crawl_format,
            "data_file": DATA_FILES[fmt],
            "bytes": fetched.bytes,
            "rows": rows,
            "sha256": fetched.sha256,
            "schema": schema,
            "etag": fetched.etag,
            "last_modified": fetched.last_modified,
            "pages": fetched.pages,
            "requests": self.http.requests,
            "http_status": fetched.status,
            "unchanged": False,
            "reused_from": None,
            "crawler_version": __version__,
        }


def _remove_stale_temp_dirs(snapshot: Path) -> None:
    """Delete this run's half-built snapshots left by a killed worker (exceptions clean up, SIGKILL does not)."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    # run_key() names contain no glob metacharacters.
    for candidate in snapshot.parent.glob(f".{snapshot.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if candidate.is_dir() and candidate.stat().st_mtime < cutoff:
                shutil.rmtree(candidate)
                log.warning("removed stale temp directory %s", candidate)


def crawl(config: PipelineConfig, run: str) -> CrawlResult:
    """Fetch ``config.crawl_url`` into the immutable snapshot ``<data_dir>/raw/<run>/`` and describe it.

    ``run`` is a directory key from :func:`mlpipeline.storage.run_key`. If the run already has a complete
    snapshot it is returned as is, without any request.
    """
    if run != run_key(run):
        raise ValueError(f"run {run!r} is not a directory key; pass storage.run_key(run_id)")
    layout = DataLayout.of(config.data_dir)
    snapshot = layout.raw(run)
    if (snapshot / MANIFEST).is_file():
        log.info("raw snapshot %s already exists; reusing it", snapshot)
        return _result(snapshot, read_json(snapshot / MANIFEST))
    if snapshot.exists():
        raise CrawlError(f"{snapshot} exists but has no {MANIFEST}: it is not a crawl snapshot; remove it and retry")
    _remove_stale_temp_dirs(snapshot)

    previous = _load_previous(layout, config)
    try:
        with atomic_directory(snapshot) as directory:
            crawler = _Crawler(config, previous, directory)
            try:
                manifest = crawler.run()
            finally:
                crawler.http.close()
            atomic_write_json(directory / MANIFEST, manifest)
    except OSError:
        # Another worker finished the same run first (rename onto a non-empty directory): use its snapshot.
        if (snapshot / MANIFEST).is_file():
            return _result(snapshot, read_json(snapshot / MANIFEST))
        raise
    with contextlib.suppress(OSError):  # history only enables conditional requests; never fail the crawl for it
        _save_state(layout, config, snapshot, manifest)
    result = _result(snapshot, manifest)
    log.info(
        "crawled %s -> %s (%s, %d rows, %d bytes, %d page(s), unchanged=%s)",
        config.crawl_url,
        result.data_path,
        result.format,
        result.rows,
        result.bytes,
        result.pages,
        result.unchanged,
    )
    return result
