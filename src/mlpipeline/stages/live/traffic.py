"""Reading one window of the prediction log (:mod:`mlpipeline.prediction_store`) for one model version.

Counts come from SQL over the whole window; rows are read as an evenly spaced sample in serving order (every
k-th row, numbered by the database), so a busy day costs a bounded read and the sample spans the whole window
instead of its last minutes. The same rows give the same sample on a retry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from mlpipeline.prediction_store import feedback, prediction_requests, predictions

# Rows read for drift (PSI, KS): as many as the reference keeps (reference.REFERENCE_SAMPLE_ROWS).
DRIFT_SAMPLE_ROWS = 5000
# Rows with feedback read for the live score: a score on 50 000 rows is exact to the third decimal.
SCORE_SAMPLE_ROWS = 50_000
# Latencies read for the percentiles.
LATENCY_SAMPLE_ROWS = 100_000
# The column of live_inputs() holding the model's answer (no feature is named so).
PREDICTION = "__prediction__"


@dataclass(frozen=True)
class Window:
    """``[start, end)`` in epoch seconds, of one model version's traffic."""

    model_name: str
    model_version: str
    start: float
    end: float


@dataclass(frozen=True)
class RequestStats:
    """The model's ``/predict`` requests in the window: how many, how they were answered, how fast (answered ones)."""

    requests: int = 0
    answered: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        """Share of requests not answered with 200 (refused input and server errors alike); None: no requests."""
        return None if self.requests == 0 else round(1.0 - self.answered / self.requests, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "answered": self.answered,
            "error_rate": self.error_rate,
            "status_counts": self.status_counts,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
        }


def _in_window(window: Window) -> ColumnElement[bool]:
    return and_(
        predictions.c.model_name == window.model_name,
        predictions.c.model_version == window.model_version,
        predictions.c.served_at >= window.start,
        predictions.c.served_at < window.end,
    )


def _evenly_spaced(
    connection: Connection, columns: list[Any], where: ColumnElement[bool], order: list[Any], total: int, cap: int
) -> list[Any]:
    """The rows of ``select(columns).where(where)`` in ``order``; every k-th of them when there are more than
    ``cap`` (k = ceil(total / cap)), numbered by the database so only the sample crosses the wire."""
    query = select(*columns).select_from(predictions)
    if any(c.table is feedback for c in columns):
        query = query.join(
            feedback,
            and_(feedback.c.request_id == predictions.c.request_id, feedback.c.row_index == predictions.c.row_index),
        )
    query = query.where(where)
    if total <= cap:
        return list(connection.execute(query.order_by(*order)).all())
    step = math.ceil(total / cap)
    numbered = query.add_columns(func.row_number().over(order_by=order).label("position")).subquery()
    picked = select(*[numbered.c[c.name] for c in columns]).where((numbered.c.position - 1) % step == 0)
    return list(connection.execute(picked.order_by(numbered.c.position)).all())


def count_predictions(connection: Connection, window: Window) -> tuple[int, int]:
    """(logged predicted rows, of which with feedback) of the version in the window."""
    where = _in_window(window)
    total = connection.execute(select(func.count()).select_from(predictions).where(where)).scalar_one()
    joined = predictions.join(
        feedback,
        and_(feedback.c.request_id == predictions.c.request_id, feedback.c.row_index == predictions.c.row_index),
    )
    with_feedback = connection.execute(select(func.count()).select_from(joined).where(where)).scalar_one()
    return int(total), int(with_feedback)


_ORDER = [predictions.c.served_at, predictions.c.request_id, predictions.c.row_index]


def live_inputs(connection: Connection, window: Window, total: int, cap: int = DRIFT_SAMPLE_ROWS) -> pd.DataFrame:
    """A sample of the window's input rows (one column per sent column) with the model's answer (``prediction``
    column: ``__prediction__`` so no feature name collides)."""
    columns = [predictions.c.features, predictions.c.prediction]
    rows = _evenly_spaced(connection, columns, _in_window(window), _ORDER, total, cap)
    frame = pd.DataFrame.from_records([row.features if isinstance(row.features, dict) else {} for row in rows])
    frame[PREDICTION] = [row.prediction for row in rows]
    return frame


def live_outcomes(connection: Connection, window: Window, total: int, cap: int = SCORE_SAMPLE_ROWS) -> pd.DataFrame:
    """A sample of the window's answered rows that have feedback: ``prediction``, ``probabilities``, ``actual``."""
    columns = [predictions.c.prediction, predictions.c.probabilities, feedback.c.actual]
    rows = _evenly_spaced(connection, columns, _in_window(window), _ORDER, total, cap)
    return pd.DataFrame.from_records(
        [(row.prediction, row.probabilities, row.actual) for row in rows],
        columns=["prediction", "probabilities", "actual"],
    )


def request_stats(connection: Connection, window: Window, cap: int = LATENCY_SAMPLE_ROWS) -> RequestStats:
    """The model's requests in the window, whichever version answered. A request no model answered (503: none
    loaded) is logged without a model name and counts for every model: a shared log cannot tell whose it was."""
    where = and_(
        or_(prediction_requests.c.model_name == window.model_name, prediction_requests.c.model_name.is_(None)),
        prediction_requests.c.served_at >= window.start,
        prediction_requests.c.served_at < window.end,
    )
    by_status = connection.execute(
        select(prediction_requests.c.status_code, func.count()).where(where).group_by(prediction_requests.c.status_code)
    ).all()
    counts = {str(status): int(count) for status, count in by_status}
    requests, answered = sum(counts.values()), counts.get("200", 0)
    if answered == 0:
        return RequestStats(requests, answered, counts)
    latency = prediction_requests.c.latency_ms
    ok = and_(where, prediction_requests.c.status_code == 200)
    query = select(latency).where(ok)
    if answered > cap:  # the newest answered requests: enough for p95 to the millisecond
        query = query.order_by(prediction_requests.c.served_at.desc()).limit(cap)
    values = np.asarray([row[0] for row in connection.execute(query).all()], dtype=float)
    p50, p95 = np.percentile(values, [50, 95])
    return RequestStats(requests, answered, counts, round(float(p50), 3), round(float(p95), 3))
