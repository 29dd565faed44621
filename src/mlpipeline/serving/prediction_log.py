"""The prediction log: what ``/predict`` answered (or refused), written to the prediction store off the request
path, by a writer in its own process.

A request handler only appends one record to a bounded in-memory queue (:meth:`PredictionLog.submit`, a few
microseconds, never a database call). A sender thread hands the queue over in chunks (every ``SEND_SECONDS`` or
``SEND_RECORDS`` records; one pickle and one pipe write per ``PICKLE_RECORDS`` of them) to the writer process
(:mod:`mlpipeline.prediction_writer`), which batches, converts and writes them. Building database rows, JSON and
``COPY`` data in the server's own process held its GIL for milliseconds per batch and showed in ``/predict``'s tail
latency; in a process of its own it costs the server only the pickling.

The queue is bounded in predicted rows (``capacity``; a refused request weighs one) counted from submission until
the writer reports the record settled (written, or dropped after its retries): when it is full a new record is
dropped and counted, so a database that is down or slow costs log records, never memory or request latency. A
collector thread reads the writer's reports and keeps the counts (Prometheus, :class:`ServingMetrics`: written and
dropped requests, queue depth in rows). A writer process that dies is started again (what it held is counted as
dropped); one that outlives the server sees its pipe close and exits. On shutdown the writer drains the queue for a
bounded time; whatever is left is counted as dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import random
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import mlpipeline
from mlpipeline.prediction_store import create_tables, engine_for
from mlpipeline.prediction_writer import HandedRecord, ModelRef, WriterSettings
from mlpipeline.serving.loading import LoadedModel, Probabilities
from mlpipeline.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

BATCH_RECORDS = 500
FLUSH_SECONDS = 0.5
BATCH_ATTEMPTS = 5  # then the batch is dropped (counted): newer records matter more than one stuck batch
RESTART_BACKOFF_SECONDS = (1.0, 30.0)  # a writer that keeps dying is restarted less and less often
SEND_RECORDS = 64  # the sender hands records over in chunks of about this many, or every SEND_SECONDS
SEND_SECONDS = 0.05
PICKLE_RECORDS = 16  # records per pipe message: the sender holds the GIL while it pickles one
POLL_SECONDS = 0.2  # how often the collector looks at the writer process when it reports nothing


@dataclass(slots=True)
class LoggedRequest:
    """One ``/predict`` request as the log keeps it: references to what the handler already has, nothing copied
    (they are pickled for the writer on the queue's feeder thread, off the request path)."""

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

    def handed(self) -> HandedRecord:
        model = self.model
        ref = None
        if model is not None:
            classes = model.class_values if model.task != "regression" else None
            ref = ModelRef(model.name, model.version, model.task, classes)
        return HandedRecord(
            self.request_id,
            self.served_at,
            self.latency_ms,
            self.status_code,
            ref,
            self.rows,
            self.row_count,
            self.predictions,
            self.probabilities,
            self.error,
        )


class PredictionLog:
    """The bounded queue to one prediction store's writer process (``start`` it, ``close`` it).

    ``engine`` is this process's own connection to the store, for readers and ``/feedback``."""

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
        self.writer_settings = WriterSettings(url, batch_records, flush_seconds, batch_attempts)
        self.last_error: str | None = None
        self._tables_ready = False
        self._pending: deque[LoggedRequest] = deque()  # submitted, not yet handed to the writer
        self._queued_rows = 0  # submitted, not yet settled by the writer
        self._submitted = 0  # records accepted into the queue, ever
        self._settled = 0  # of those, written or dropped (FIFO: all up to this count)
        self._cond = threading.Condition()
        self._closing = False
        self._close_timeout = 0.0
        self._writer: _WriterProcess | None = None
        self._threads: list[threading.Thread] = []
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
            if self._writer is None or self._closing or self._queued_rows + weight > self.capacity:
                self.metrics.prediction_log_dropped.inc()
                return False
            self._pending.append(record)
            self._queued_rows += weight
            self._submitted += 1
            if len(self._pending) >= SEND_RECORDS:
                self._cond.notify_all()
        return True

    def ensure_tables(self) -> None:
        """Create the store's tables from this process, once (blocking: readers call it from a worker thread). The
        writer creates them too, from its own process, but it may not have got there yet."""
        if not self._tables_ready:
            create_tables(self.engine)
            self._tables_ready = True

    def wait_until_written(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every record queued before this call is written or dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._cond.notify_all()  # the sender hands them over now rather than at its next tick
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._writer is None:
                    return False
                self._cond.wait(remaining)
        return True

    # ----------------------------------------------------------------------------------------------------------
    # Lifecycle.
    # ----------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is not None:
            return
        with self._cond:
            self._closing = False
            self._writer = _WriterProcess.start(self.writer_settings)
        self._threads = [
            threading.Thread(target=self._send, name="prediction-log-sender", daemon=True),
            threading.Thread(target=self._collect, name="prediction-log-collector", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking records, write what is queued within ``timeout`` s; count the rest as dropped."""
        with self._cond:
            self._closing = True
            self._close_timeout = timeout
            writer = self._writer
            self._cond.notify_all()  # the sender hands over what is pending, then says close
        if writer is not None:
            writer.end(timeout + 1.0)
        for thread in self._threads:
            thread.join(timeout + 5.0)  # the collector drains the writer's last reports, then sees it gone
        if writer is not None:
            writer.release()
        with self._cond:
            left = self._submitted - self._settled
            self._settled = self._submitted
            self._queued_rows = 0
            self._pending.clear()
            self._writer = None
            self._cond.notify_all()
        if left:
            self.metrics.prediction_log_dropped.inc(left)
            log.warning("prediction log: %d request record(s) not written before shutdown", left)
        self._threads = []
        self.engine.dispose()

    # ----------------------------------------------------------------------------------------------------------
    # The sender thread: pending records go to the writer in chunks, one pickle and one write per chunk.
    # ----------------------------------------------------------------------------------------------------------

    def _send(self) -> None:
        while True:
            with self._cond:
                if len(self._pending) < SEND_RECORDS and not self._closing:
                    self._cond.wait(SEND_SECONDS)
                writer, closing = self._writer, self._closing
                if writer is None:
                    return
                chunk = [self._pending.popleft() for _ in range(len(self._pending))]
                writer.weights.extend(record.weight for record in chunk)
            if chunk or closing:
                self._hand_over(writer, chunk, closing)
            if closing:
                return

    def _hand_over(self, writer: _WriterProcess, chunk: list[LoggedRequest], closing: bool) -> None:
        """Send ``chunk`` in messages of at most ``PICKLE_RECORDS`` records (the last one closing, if ``closing``).

        ``pickle.dumps`` is one C call that holds the GIL throughout, and each pipe write releases it: in small
        messages a request waits at most one small pickling (64 records took ~0.3 ms on the 2-core machine)."""
        parts = [chunk[start : start + PICKLE_RECORDS] for start in range(0, len(chunk), PICKLE_RECORDS)] or [[]]
        for index, part in enumerate(parts):
            close_timeout = self._close_timeout if closing and index == len(parts) - 1 else None
            message = ([record.handed() for record in part], close_timeout)
            try:
                writer.inbox.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:  # the writer died: the collector counts what it held
                return

    # ----------------------------------------------------------------------------------------------------------
    # The collector thread: the writer's reports become counts; a writer that died is replaced.
    # ----------------------------------------------------------------------------------------------------------

    def _collect(self) -> None:
        restarts = 0
        while True:
            writer = self._writer
            if writer is None:
                return
            report = writer.next_report(POLL_SECONDS)
            if report is not None:
                self._apply(writer, report)
                restarts = 0 if "records" in report else restarts
            elif not writer.alive():
                if self._closing:
                    return
                restarts = self._replace(writer, restarts)

    def _apply(self, writer: _WriterProcess, report: dict[str, Any]) -> None:
        if "problem" in report:
            self.last_error = report["problem"]
            return
        records = report["records"]
        with self._cond:
            # The writer settles records in the order they were handed over: the oldest weights are theirs.
            self._queued_rows -= sum(writer.weights.popleft() for _ in range(records))
            self._settled += records
            self._cond.notify_all()
        counter = self.metrics.prediction_log_written if report["written"] else self.metrics.prediction_log_dropped
        counter.inc(records)
        if report["written"] and self.last_error is not None:
            log.warning("prediction log: writing again after: %s", self.last_error)
        self.last_error = report["error"]

    def _replace(self, dead: _WriterProcess, restarts: int) -> int:
        """Start a new writer in place of ``dead``; what ``dead`` held (unsettled records) is counted as dropped."""
        first, most = RESTART_BACKOFF_SECONDS
        time.sleep(min(first * 2**restarts, most))
        with self._cond:
            if self._closing or self._writer is not dead:
                return restarts
            lost = len(dead.weights)
            self._settled += lost
            self._queued_rows -= sum(dead.weights)
            self._writer = _WriterProcess.start(self.writer_settings)
            self._cond.notify_all()
        dead.end(0)  # reaped; its pipes close with the last reference (the sender may still hold one)
        self.metrics.prediction_log_dropped.inc(lost)
        self.last_error = f"the writer process exited with code {dead.process.returncode}; started a new one"
        log.warning("prediction log: %s (%d record(s) it held are dropped)", self.last_error, lost)
        return restarts + 1


@dataclass
class _WriterProcess:
    """One writer process, the pipe that feeds it and the pipe it reports on."""

    process: subprocess.Popen[bytes]
    inbox: Connection  # records to the writer
    reports: Connection  # its reports back
    weights: deque[int]  # of the records handed to this writer and not yet settled, in order

    @classmethod
    def start(cls, settings: WriterSettings) -> _WriterProcess:
        records_read, records_write = os.pipe()
        reports_read, reports_write = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlpipeline.prediction_writer", str(records_read), str(reports_write)],
                pass_fds=(records_read, reports_write),
                stdin=subprocess.DEVNULL,
                env=_child_environment(),
            )
        except BaseException:
            os.close(records_write)
            os.close(reports_read)
            raise
        finally:
            # The writer's ends: with them closed here, a dead writer means a broken pipe, not a blocked write.
            os.close(records_read)
            os.close(reports_write)
        inbox = Connection(records_write, readable=False)
        inbox.send_bytes(json.dumps(dataclasses.asdict(settings)).encode())  # the URL may hold a password: not argv
        return cls(process, inbox, Connection(reports_read, writable=False), deque())

    def alive(self) -> bool:
        return self.process.poll() is None

    def next_report(self, timeout: float) -> dict[str, Any] | None:
        """The writer's next report, if one comes within ``timeout`` s (None: none came, or the writer is gone)."""
        try:
            if self.reports.poll(timeout):
                return json.loads(self.reports.recv_bytes())
        except (EOFError, OSError):  # the writer exited: give it a moment to be reaped, so alive() says so
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        return None

    def end(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the process to finish, then kill it (it ignores SIGTERM: see its main)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def release(self) -> None:
        """Close both pipes (once no thread here uses them)."""
        self.inbox.close()
        self.reports.close()


def _child_environment() -> dict[str, str]:
    """This environment, with the directory mlpipeline was imported from first on the writer's PYTHONPATH (the
    server may have found it through sys.path changes that a new interpreter would not make)."""
    source = str(Path(mlpipeline.__file__).resolve().parent.parent)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
    return environment
