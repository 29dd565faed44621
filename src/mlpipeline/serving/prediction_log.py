"""The prediction log's writer: what ``/predict`` answered (or refused), written to the prediction store off the
request path.

A request handler only appends one record to a bounded in-memory queue (:meth:`PredictionLog.submit`, a few
microseconds, never a database call). One background thread drains it in batches (up to ``batch_records`` requests,
or whatever is queued every ``flush_seconds``), one transaction per batch into ``prediction_requests`` and
``predictions`` (:mod:`mlpipeline.prediction_store`; ``COPY`` on PostgreSQL). The queue is bounded in predicted
rows (``capacity``; a refused request weighs one): when it is full a new record is dropped and counted, so a
database that is down or slow costs log records, never memory or request latency. A failed batch is retried with
backoff (the tables re-created first, in case the database was re-created), then dropped and counted. The tables are
created when the writer starts, retried while the database is unreachable. On shutdown the writer drains the queue
for a bounded time; whatever is left is counted as dropped.

Counts (Prometheus, :class:`ServingMetrics`) are in requests: written, dropped; the queue depth is in rows.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from mlpipeline.prediction_store import (
    copy_new,
    create_tables,
    engine_for,
    insert_new,
    prediction_requests,
    predictions,
)
from mlpipeline.serving.guards import clip
from mlpipeline.serving.loading import LoadedModel, Probabilities
from mlpipeline.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

BATCH_RECORDS = 500
FLUSH_SECONDS = 0.5
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
BATCH_ATTEMPTS = 5  # then the batch is dropped (counted): newer records matter more than one stuck batch
STATEMENT_TIMEOUT_MS = 10_000  # PostgreSQL: a hung database fails a batch instead of stalling the writer
MAX_ERROR_CHARS = 300


@dataclass(slots=True)
class LoggedRequest:
    """One ``/predict`` request as the log keeps it: references to what the handler already has, nothing copied
    (the rows become database rows on the writer thread)."""

    request_id: str
    served_at: float
    latency_ms: float
    status_code: int
    model: LoadedModel | None  # the version that answered (None: none did)
    rows: list[Any] | None = None  # as sent (answered requests only)
    row_count: int = 0
    predictions: list[Any] | None = None
    probabilities: Probabilities = None
    error: str | None = None

    @property
    def weight(self) -> int:
        return max(1, self.row_count)


class PredictionLog:
    """The bounded queue and its writer thread for one prediction store (``start`` it, ``close`` it)."""

    def __init__(
        self,
        url: str,
        *,
        metrics: ServingMetrics,
        sample: float = 1.0,
        capacity: int = 10_000,
        batch_records: int = BATCH_RECORDS,
        flush_seconds: float = FLUSH_SECONDS,
        batch_attempts: int = BATCH_ATTEMPTS,
    ) -> None:
        self.engine = engine_for(url)
        self.metrics = metrics
        self.sample = sample
        self.capacity = capacity
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.batch_attempts = batch_attempts
        self.last_error: str | None = None
        self._queue: deque[LoggedRequest] = deque()
        self._queued_rows = 0
        self._submitted = 0  # records accepted into the queue, ever
        self._settled = 0  # of those, written or dropped by the writer (FIFO: all up to this count)
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._deadline = math.inf  # monotonic time after which a closing writer gives up
        self._thread: threading.Thread | None = None
        metrics.prediction_log_queue_depth.set_function(lambda: self._queued_rows)

    # ----------------------------------------------------------------------------------------------------------
    # The request side: cheap, never blocks on the database.
    # ----------------------------------------------------------------------------------------------------------

    def sampled(self) -> bool:
        """Whether this request is to be logged (``sample`` is the fraction of requests that are)."""
        return self.sample >= 1.0 or random.random() < self.sample

    def submit(self, record: LoggedRequest) -> bool:
        """Queue ``record`` for the writer; False (and counted as dropped) when the queue is full or closed."""
        weight = record.weight
        with self._cond:
            if self._closing.is_set() or self._queued_rows + weight > self.capacity:
                self.metrics.prediction_log_dropped.inc()
                return False
            self._queue.append(record)
            self._queued_rows += weight
            self._submitted += 1
            if len(self._queue) >= self.batch_records:
                self._cond.notify_all()
        return True

    def wait_until_written(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every record queued before this call is written or dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._cond.wait(remaining)
        return True

    # ----------------------------------------------------------------------------------------------------------
    # Lifecycle.
    # ----------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking records, write what is queued within ``timeout`` s; count the rest as dropped."""
        with self._cond:
            self._deadline = time.monotonic() + timeout
            self._closing.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._settled = self._submitted
            self._cond.notify_all()
        if left:
            self.metrics.prediction_log_dropped.inc(left)
            log.warning("prediction log: %d request record(s) not written before shutdown", left)
        self._thread = None
        self.engine.dispose()

    # ----------------------------------------------------------------------------------------------------------
    # The writer thread.
    # ----------------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        # Tables first, so readers (/feedback, monitoring) find them even before traffic; while the database is
        # unreachable this is retried with backoff, between batches, which keep being attempted (and dropped).
        tables_ready = self._try_create_tables()
        delay = FIRST_BACKOFF_SECONDS
        next_try = time.monotonic() + delay
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                tables_ready = self._write_with_retry(batch, tables_ready)
                with self._cond:
                    self._settled += len(batch)
                    self._cond.notify_all()
            elif not tables_ready and time.monotonic() >= next_try:
                tables_ready = self._try_create_tables()
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                next_try = time.monotonic() + delay

    def _try_create_tables(self) -> bool:
        try:
            create_tables(self.engine)
        except SQLAlchemyError as exc:
            self._note_error(exc)
            return False
        return True

    def _next_batch(self) -> list[LoggedRequest] | None:
        """Up to ``batch_records`` records once that many are queued or ``flush_seconds`` passed ([] if none are);
        None once closing and empty."""
        with self._cond:
            deadline = time.monotonic() + self.flush_seconds
            while len(self._queue) < self.batch_records and not self._closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._queue:
                return None if self._closing.is_set() else []
            batch = [self._queue.popleft() for _ in range(min(self.batch_records, len(self._queue)))]
            self._queued_rows -= sum(record.weight for record in batch)
            return batch

    def _write_with_retry(self, batch: list[LoggedRequest], tables_ready: bool) -> bool:
        """Write one batch, retrying with backoff; returns whether the tables are known to exist."""
        delay = FIRST_BACKOFF_SECONDS
        for attempt in range(1, self.batch_attempts + 1):
            try:
                if not tables_ready:
                    create_tables(self.engine)
                    tables_ready = True
                self._write(batch)
            except SQLAlchemyError as exc:
                # The database may be down, slow, or re-created without our tables: check them again next time.
                tables_ready = False
                self._note_error(exc)
                if attempt == self.batch_attempts or self._past_deadline():
                    break
                self._closing.wait(delay)  # a shutdown cuts the wait short, not the attempts
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            except Exception as exc:  # not the database's fault: retrying cannot help
                self._note_error(exc)
                break
            else:
                self.metrics.prediction_log_written.inc(len(batch))
                if self.last_error is not None:
                    log.warning("prediction log: writing again after: %s", self.last_error)
                self.last_error = None
                return tables_ready
        self.metrics.prediction_log_dropped.inc(len(batch))
        return tables_ready

    def _past_deadline(self) -> bool:
        return self._closing.is_set() and time.monotonic() >= self._deadline

    def _note_error(self, exc: BaseException) -> None:
        # The first line only: SQLAlchemy appends the statement and its (huge) parameters.
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [""])[0]
        message = clip(f"{type(cause).__name__}: {first_line}", MAX_ERROR_CHARS)
        if message != self.last_error:
            log.warning("prediction log: cannot write (records are dropped while this lasts): %s", message)
        self.last_error = message

    def _write(self, batch: list[LoggedRequest]) -> None:
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


def _request_row(record: LoggedRequest) -> dict[str, Any]:
    model = record.model
    classifier = model is not None and model.task != "regression"
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
        "classes": model.class_values if classifier else None,
    }


def _prediction_rows(record: LoggedRequest) -> list[dict[str, Any]]:
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
