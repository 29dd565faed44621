"""The data source's HTTP request handler: routing, conditional requests, pagination and injected failures.

It serves whatever :class:`mlpipeline.dev.datasource.DataSourceServer` (``self.server.source``) holds and records
every request there; the endpoints are described on that class.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd

from mlpipeline.dev import public_datasets
from mlpipeline.dev.formats import CONTENT_TYPES, json_records

if TYPE_CHECKING:
    from mlpipeline.dev.datasource import DataSourceServer

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100_000
DEFAULT_PAGE_SIZE = 1000

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
<li><a href="/api/pages">/api/pages</a></li><li><a href="/datasets">/datasets</a> (public datasets)</li>
<li><a href="/health">/health</a></li></ul></body></html>
"""


class BadRequest(ValueError):
    """A request the client must fix (answered 400)."""


@dataclass(frozen=True)
class ServedRequest:
    """One request the server answered (for tests and debugging)."""

    method: str
    path: str  # path and query as sent
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class SourceHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the data source it serves."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], source: DataSourceServer) -> None:
        self.source = source
        super().__init__(address, _Handler)


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
        raise BadRequest(f"invalid cursor {cursor!r}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mlpipeline-datasource/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    server: SourceHTTPServer

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
        self._recorded = False
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
            if path == public_datasets.DATASETS_PATH:
                routes[path] = lambda q: self._json(200, {"datasets": _dataset_index()})
            elif path.startswith(public_datasets.DATASETS_PATH + "/"):
                routes[path] = lambda q: self._public_dataset(path)
            route = routes.get(path)
            if route is None:
                self._json(404, {"error": f"no such resource: {path}"})
                return
            if source.delay_seconds > 0:
                time.sleep(source.delay_seconds)
            failure = source.take_failure()
            if failure is not None:
                extra = {"Retry-After": "0"} if failure in (429, 503) else {}
                self._json(failure, {"error": f"injected failure {failure}"}, extra)
                return
            route(query)
        except BadRequest as exc:
            self._json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. it hit its size limit)
        except Exception as exc:  # a bug must still produce an HTTP answer, not a dropped connection
            log.exception("error serving %s", self.path)
            if self._status == 0:  # nothing sent yet
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
            self.close_connection = True
        finally:
            self._record(self._status)

    def _record(self, status: int) -> None:
        """Record the request once, before its answer goes out: a client that has its answer must find it in
        :attr:`DataSourceServer.requests` (recording after the write raced the tests that count requests)."""
        if self._recorded:
            return
        self._recorded = True
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith("if-")}
        self.server.source.record(ServedRequest(self.command, self.path, status, headers))

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._status = status
        self._record(status)
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

    def _validators(self, etag: str, modified: int | None = None) -> dict[str, str]:
        """ETag and Last-Modified (``modified``, Unix seconds; default: when the churn data last changed)."""
        source = self.server.source
        if not source.conditional:
            return {}
        last_modified = source.last_modified if modified is None else email.utils.formatdate(modified, usegmt=True)
        return {"ETag": etag, "Last-Modified": last_modified, "Cache-Control": "no-cache"}

    def _not_modified(self, etag: str, modified: int | None = None) -> bool:
        """Evaluate If-None-Match (wins when present, RFC 9110) or else If-Modified-Since; send 304 if met."""
        source = self.server.source
        modified = source.modified_timestamp if modified is None else modified
        if not source.conditional:
            return False
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            matched = "*" in tags or etag in tags
        else:
            since = self.headers.get("If-Modified-Since")
            try:
                matched = since is not None and modified <= email.utils.parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                matched = False  # unparseable dates are ignored, as the RFC says
        if matched:
            self._status = 304
            self._record(304)
            self.send_response(304)
            for name, value in self._validators(etag, modified).items():
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
            raise BadRequest(f"page_size must be an integer, got {raw!r}") from None
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise BadRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {size}")
        return size

    def _link(self, path: str, query: dict[str, list[str]], **updates: str) -> str:
        merged = {k: v[-1] for k, v in query.items()}
        merged.update(updates)
        return f"{self._base_url()}{path}?{urlencode(merged)}"

    # --- endpoints ------------------------------------------------------------------------------------------
    def _file(self, fmt: str, query: dict[str, list[str]]) -> None:
        source = self.server.source
        params = source.request_params(query)
        etag = _etag(params, fmt)
        if self._not_modified(etag):
            return
        self._send(200, source.body(params, fmt), CONTENT_TYPES[fmt], self._validators(etag))

    def _public_dataset(self, path: str) -> None:
        """``/datasets/<name>.csv``: a public dataset from an installed package (it never changes while served)."""
        name = path[len(public_datasets.DATASETS_PATH) + 1 :].removesuffix(".csv")
        try:
            dataset = public_datasets.get(name)
            body = dataset.csv_bytes()
        except (public_datasets.UnknownDataset, FileNotFoundError) as exc:
            self._json(404, {"error": str(exc)})
            return
        etag = _etag("dataset", hashlib.sha256(body).hexdigest())
        modified = int(max(p.stat().st_mtime for p in dataset.paths))
        if self._not_modified(etag, modified):
            return
        self._send(200, body, CONTENT_TYPES["csv"], self._validators(etag, modified))

    def _records(self, query: dict[str, list[str]]) -> None:
        source = self.server.source
        params = source.request_params(query)
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
            raise BadRequest(f"cursor offset {offset} is outside 0..{total}")
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
        params = source.request_params(query)
        size = self._page_size(query)
        raw_page = (query.get("page") or ["1"])[-1]
        try:
            page = int(raw_page)
        except ValueError:
            raise BadRequest(f"page must be an integer, got {raw_page!r}") from None
        if page < 1:
            raise BadRequest(f"page must be >= 1, got {page}")
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


def _dataset_index() -> list[dict[str, Any]]:
    return [dataset.describe() for dataset in public_datasets.DATASETS.values()]


def _envelope(field_name: str, rows: pd.DataFrame, extra: dict[str, Any]) -> bytes:
    # The records are built column-wise in Arrow; splice them into the envelope without re-parsing.
    rest = json.dumps(extra)[1:-1].encode()
    return b'{"' + field_name.encode() + b'": ' + json_records(rows) + b", " + rest + b"}"
