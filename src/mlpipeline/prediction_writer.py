"""The prediction log's writer process: batches of logged requests into the prediction store.

The model server (:class:`mlpipeline.serving.prediction_log.PredictionLog`) starts it as
``python -m mlpipeline.prediction_writer RECORDS_FD REPORTS_FD``, so turning records into database rows, JSON and
``COPY`` data never competes with request handlers for the server's GIL. A plain subprocess, not
``multiprocessing``: spawning re-imports the parent's main module, which would break any unguarded script that
starts the server.

Protocol, framed by :class:`multiprocessing.connection.Connection` on two inherited pipes. Records pipe (server to
writer): first the :class:`WriterSettings` as JSON (the URL may carry a password: never on the command line), then
pickled ``(records, close_timeout)`` messages, ``records`` a list of :class:`HandedRecord` and ``close_timeout``
None or, on the last message, the seconds left to write what is queued. Reports pipe (writer to server): JSON, one
per batch ``{"records", "written", "error"}`` (written, or dropped after ``batch_attempts`` tries with
backoff, the tables re-created first in case the database was re-created), and ``{"problem"}`` when the tables
cannot be created. The server keeps the counts; this process keeps none.

It stops after the closing message, or when the server is gone (its end of the records pipe closes). It imports
SQLAlchemy and the store only: no web framework, no model code.
"""

from __future__ import annotations

import json
import logging
import pickle
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from mlpipeline.prediction_store import (
    copy_new,
    create_tables,
    engine_for,
    insert_new,
    prediction_requests,
    predictions,
)
from mlpipeline.text import clip

log = logging.getLogger("mlpipeline.serving.prediction_log")

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
STATEMENT_TIMEOUT_MS = 10_000  # PostgreSQL: a hung database fails a batch instead of stalling the writer
MAX_ERROR_CHARS = 300


class ModelRef(NamedTuple):
    """The version that answered a request, as the log stores it."""

    name: str
    version: str
    task: str
    classes: list[Any] | None  # a classifier's labels; None for a regressor


class HandedRecord(NamedTuple):
    """One ``/predict`` request as handed to the writer (plain data: it crosses a process boundary)."""

    request_id: str
    served_at: float
    latency_ms: float
    status_code: int
    model: ModelRef | None  # None: no model answered
    rows: list[Any] | None
    row_count: int
    predictions: list[Any] | None
    probabilities: list[Any] | None
    error: str | None


@dataclass(frozen=True)
class WriterSettings:
    url: str
    batch_records: int
    flush_seconds: float
    batch_attempts: int


def main(argv: list[str]) -> int:
    """``python -m mlpipeline.prediction_writer RECORDS_FD REPORTS_FD``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A Ctrl-C or a SIGTERM to the server's process group is the server's to handle: it then closes the records
    # pipe after the last records, and that (or the server's death) is what ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inbox = Connection(int(argv[0]), writable=False)
    outbox = Connection(int(argv[1]), readable=False)
    try:
        settings = WriterSettings(**json.loads(inbox.recv_bytes()))
    except (EOFError, OSError):
        return 0  # the server went away before it told us anything
    writer = _Writer(settings, inbox, outbox)
    try:
        writer.run()
    finally:
        writer.engine.dispose()
    return 0


@dataclass
class _Writer:
    settings: WriterSettings
    inbox: Connection
    outbox: Connection
    engine: Engine = field(init=False)
    received: deque[HandedRecord] = field(default_factory=deque)
    last_error: str | None = None
    deadline: float | None = None  # set by the closing message: after it, a failing batch is not retried

    def __post_init__(self) -> None:
        self.engine = engine_for(self.settings.url)

    def run(self) -> None:
        # Tables first, so readers (/feedback, monitoring) find them even before traffic; while the database is
        # unreachable this is retried with backoff, between batches, which keep being attempted (and dropped).
        tables_ready = self._try_create_tables()
        delay = FIRST_BACKOFF_SECONDS
        next_try = time.monotonic() + delay
        while True:
            batch = self._next_batch()
            if batch:
                tables_ready = self._write_with_retry(batch, tables_ready)
            elif self.deadline is not None:
                return
            elif not tables_ready and time.monotonic() >= next_try:
                tables_ready = self._try_create_tables()
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                next_try = time.monotonic() + delay

    def _next_batch(self) -> list[HandedRecord]:
        """Up to ``batch_records`` records, once that many arrived or ``flush_seconds`` passed (at once when
        closing: by then everything has arrived)."""
        limit = self.settings.batch_records
        until = time.monotonic() + self.settings.flush_seconds
        while len(self.received) < limit and self.deadline is None:
            remaining = until - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                break
        return [self.received.popleft() for _ in range(min(limit, len(self.received)))]

    def _receive(self, timeout: float) -> bool:
        """Take one message from the pipe if one comes within ``timeout`` s; False if none did (or the server's
        end is closed: then the writer stops)."""
        try:
            if not self.inbox.poll(timeout):
                return False
            # Written by the server process that started this one, on a pipe nothing else can reach: trusted.
            records, close_timeout = pickle.loads(self.inbox.recv_bytes())
        except (EOFError, OSError):  # the server is gone
            self.deadline = time.monotonic()
            return False
        self.received.extend(records)
        if close_timeout is not None:
            self.deadline = time.monotonic() + close_timeout
        return True

    def _report(self, **fields: Any) -> None:
        try:
            self.outbox.send_bytes(json.dumps(fields).encode())
        except OSError:  # the server is gone: nobody to write for
            self.deadline = time.monotonic()

    def _try_create_tables(self) -> bool:
        try:
            create_tables(self.engine)
        except SQLAlchemyError as exc:
            self._note_error(exc)
            self._report(problem=self.last_error)
            return False
        return True

    def _write_with_retry(self, batch: list[HandedRecord], tables_ready: bool) -> bool:
        """Write one batch, retrying with backoff; reports it settled; returns whether the tables are known to
        exist."""
        delay = FIRST_BACKOFF_SECONDS
        written = False
        for attempt in range(1, self.settings.batch_attempts + 1):
            try:
                if not tables_ready:
                    create_tables(self.engine)
                    tables_ready = True
                self._write(batch)
            except SQLAlchemyError as exc:
                # The database may be down, slow, or re-created without our tables: check them again next time.
                tables_ready = False
                self._note_error(exc)
                if attempt == self.settings.batch_attempts or self._past_deadline():
                    break
                time.sleep(delay if self.deadline is None else min(delay, max(0.0, self.deadline - time.monotonic())))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            except Exception as exc:  # not the database's fault: retrying cannot help
                self._note_error(exc)
                break
            else:
                if self.last_error is not None:
                    log.warning("prediction log: writing again after: %s", self.last_error)
                self.last_error = None
                written = True
                break
        self._report(records=len(batch), written=written, error=self.last_error)
        return tables_ready

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _note_error(self, exc: BaseException) -> None:
        # The first line only: SQLAlchemy appends the statement and its (huge) parameters.
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [""])[0]
        message = clip(f"{type(cause).__name__}: {first_line}", MAX_ERROR_CHARS)
        if message != self.last_error:
            log.warning("prediction log: cannot write (records are dropped while this lasts): %s", message)
        self.last_error = message

    def _write(self, batch: list[HandedRecord]) -> None:
        request_rows = [_request_row(record) for record in batch]
        prediction_rows = [row for record in batch for row in _prediction_rows(record)]
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                copy_new(connection, prediction_requests, request_rows)
                copy_new(connection, predictions, prediction_rows)
            else:
                insert_new(connection, prediction_requests, request_rows)
                insert_new(connection, predictions, prediction_rows)


def _request_row(record: HandedRecord) -> dict[str, Any]:
    model = record.model
    return {
        "request_id": record.request_id,
        "served_at": record.served_at,
        "model_name": None if model is None else model.name,
        "model_version": None if model is None else model.version,
        "rows": record.row_count,
        "latency_ms": record.latency_ms,
        "status_code": record.status_code,
        "error": record.error,
        "task": None if model is None else model.task,
        "classes": None if model is None else model.classes,
    }


def _prediction_rows(record: HandedRecord) -> list[dict[str, Any]]:
    model = record.model
    if model is None or record.rows is None or record.predictions is None:
        return []
    probabilities = record.probabilities
    return [
        {
            "request_id": record.request_id,
            "row_index": index,
            "served_at": record.served_at,
            "model_name": model.name,
            "model_version": model.version,
            "features": _json_safe(row),
            "prediction": prediction,
            "probabilities": None if probabilities is None else probabilities[index],
        }
        for index, (row, prediction) in enumerate(zip(record.rows, record.predictions, strict=True))
    ]


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """The row as sent, except NaN (which Python's JSON reader accepts and the model takes as missing) as null:
    PostgreSQL's json type refuses NaN."""
    if any(isinstance(value, float) and value != value for value in row.values()):
        return {key: (None if isinstance(value, float) and value != value else value) for key, value in row.items()}
    return row


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: the pickled records name their classes by the
    # module's real name.
    from mlpipeline.prediction_writer import main as writer_main

    raise SystemExit(writer_main(sys.argv[1:]))
