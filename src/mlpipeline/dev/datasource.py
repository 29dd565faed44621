"""The bundled data source: the synthetic customer-churn dataset over HTTP (and the public datasets that installed
packages ship, at ``/datasets/<name>.csv``), and its command line.

It is the demo's default source and the tests' fixture, so it behaves like a real (imperfect) upstream:

* :func:`~mlpipeline.dev.churn_data.generate_churn_dataset` builds the data (clean, dirty or drifted);
* :func:`~mlpipeline.dev.formats.serialize` turns a frame into ``csv`` / ``jsonl`` / ``parquet`` bytes;
* :class:`DataSourceServer` serves the data over HTTP (whole files with ETag/Last-Modified and 304s, plus two
  paginated JSON APIs; the handler is :mod:`mlpipeline.dev.datasource_handler`), with runtime switches for
  failures, delays, drift and version bumps.

The names of the first two are re-exported here, where tests, benchmarks and the demo import them from.
Run it standalone with ``python -m mlpipeline.dev.datasource --port 8765``.
"""

from __future__ import annotations

import argparse
import email.utils
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mlpipeline.constants import FALSE_TOKENS, TRUE_TOKENS
from mlpipeline.dev.churn_data import (
    COLUMNS,
    FEATURE_COLUMNS,
    ID_COLUMN,
    TARGET_COLUMN,
    check_rate,
    generate_churn_dataset,
)
from mlpipeline.dev.datasource_handler import BROKEN_CSV, BadRequest, ServedRequest, SourceHTTPServer
from mlpipeline.dev.formats import CONTENT_TYPES, FORMATS, serialize, to_csv_bytes, to_jsonl_bytes, to_parquet_bytes

__all__ = [
    "BROKEN_CSV",
    "COLUMNS",
    "CONTENT_TYPES",
    "FEATURE_COLUMNS",
    "FORMATS",
    "ID_COLUMN",
    "MAX_ROWS",
    "TARGET_COLUMN",
    "DataSourceServer",
    "ServedRequest",
    "generate_churn_dataset",
    "main",
    "serialize",
    "to_csv_bytes",
    "to_jsonl_bytes",
    "to_parquet_bytes",
]

MAX_ROWS = 20_000_000  # protects the server from accidental huge requests (10 M rows of CSV is ~1.2 GB)


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
    * ``/datasets/<name>.csv`` -- a public dataset shipped inside an installed package (iris, wine, breast_cancer,
      diabetes, penguins, seattle_weather: :mod:`mlpipeline.dev.public_datasets`), as a plain CSV with ETag and
      Last-Modified (the file's); ``/datasets`` -- their list (JSON: name, path, target, task, source). The
      query parameters and content switches below are the churn data's and do not apply to them.
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
    missing_rate = _content_setting("missing_rate", lambda v: check_rate("missing_rate", v))
    malformed_rate = _content_setting("malformed_rate", lambda v: check_rate("malformed_rate", v))
    duplicate_rate = _content_setting("duplicate_rate", lambda v: check_rate("duplicate_rate", v, 0.5))
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
        self._httpd = SourceHTTPServer((host, port), self)
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
    def modified_timestamp(self) -> int:
        """When the content last changed (Unix seconds)."""
        return self._modified

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

    def request_params(self, query: dict[str, list[str]]) -> _Params:
        """The dataset a request asks for: the server's settings, overridden by the query (BadRequest if invalid)."""
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
                    updates[name] = check_rate(name, float(value), upper)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return params._replace(**updates)

    def take_failure(self) -> int | None:
        """The status of the next injected failure (consuming it), or None."""
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def record(self, request: ServedRequest) -> None:
        """Remember an answered request (see :attr:`requests`)."""
        with self._lock:
            self.requests.append(request)


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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


def _parser() -> argparse.ArgumentParser:
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
    return parser


if __name__ == "__main__":
    sys.exit(main())
