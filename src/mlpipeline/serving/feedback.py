"""``POST /feedback``: the actual outcome of a logged prediction, checked against what was predicted and stored.

A body is one ``{"request_id": ..., "row": 0, "actual": ...}`` (``row`` defaults to 0) or ``{"feedback": [...]}``
of up to :data:`MAX_FEEDBACK_ITEMS` of them. Each must name a logged, answered request and one of its rows, and the
actual must fit the task of the model version that answered it (logged with the request, so it holds whichever
version serves by now):

- a classifier's actual is one of its classes, with the JSON type ``/predict`` answers them in: ``1`` for a class
  ``1`` (``1.0`` too: stored as ``1``), but ``"1"`` is refused with a message saying to send ``1``; ``"yes"`` for a
  class ``"yes"``; ``true`` only for a boolean class. What is stored is the class exactly as ``/predict`` answers it.
- a regressor's actual is a finite number (stored as a float).

Nothing is stored unless every item is valid (422 listing the problems). Storing is an upsert on (request id, row):
re-posting an outcome replaces it, so a client may retry safely.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from mlpipeline.prediction_store import feedback, prediction_requests, upsert
from mlpipeline.serving.prediction_log import PredictionLog
from mlpipeline.serving.schema import quoted

MAX_FEEDBACK_ITEMS = 1000
MAX_REQUEST_ID_CHARS = 64  # prediction_requests.request_id
# Feedback may follow its prediction within milliseconds: an id not found yet waits this long for the writer.
PENDING_WRITE_WAIT_SECONDS = 5.0
_ITEM_KEYS = frozenset({"request_id", "row", "actual"})


class FeedbackError(ValueError):
    """The body is not valid feedback: ``errors`` lists (item, request_id, error) per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        first = errors[0]
        where = f"item {first['item']}" + (f" (request {first['request_id']})" if first.get("request_id") else "")
        more = f"; and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
        super().__init__(f"invalid feedback: {where}: {first['error']}{more}")


@dataclass(frozen=True)
class Outcome:
    """One checked feedback item, ready to store."""

    request_id: str
    row: int
    actual: Any


@dataclass(frozen=True)
class _Logged:
    status_code: int
    rows: int
    task: str | None
    classes: list[Any] | None


def parse_items(payload: Any) -> list[dict[str, Any]]:
    """The feedback items of a body, each with a string ``request_id``, an int ``row`` and an ``actual``."""
    items = payload.get("feedback") if isinstance(payload, dict) and "feedback" in payload else [payload]
    if isinstance(payload, dict) and "feedback" in payload and len(payload) > 1:
        raise FeedbackError([{"item": None, "error": "a batch body has only the key 'feedback'"}])
    if not isinstance(items, list) or not items:
        raise FeedbackError([{"item": None, "error": "'feedback' must be a non-empty list of feedback objects"}])
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise FeedbackError([{"item": None, "error": f"too many items: {len(items)} > {MAX_FEEDBACK_ITEMS}"}])
    errors: list[dict[str, Any]] = []
    parsed = []
    for index, item in enumerate(items):
        problem = _shape_problem(item)
        if problem:
            errors.append({"item": index, "error": problem})
        else:
            parsed.append({"request_id": item["request_id"], "row": item.get("row", 0), "actual": item["actual"]})
    if errors:
        raise FeedbackError(errors)
    return parsed


def _shape_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f'expected an object {{"request_id", "row", "actual"}}, got {type(item).__name__}'
    unknown = [key for key in item if key not in _ITEM_KEYS]
    if unknown:
        return f"unknown key(s) {[quoted(key) for key in unknown[:5]]}; allowed: request_id, row, actual"
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
        return f"request_id must be the text /predict answered (up to 64 characters), got {quoted(request_id)}"
    row = item.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        return f"row must be a row index (an integer, 0 or more), got {quoted(row)}"
    if "actual" not in item or item["actual"] is None:
        return "actual is missing: send the true label (classifier) or number (regressor)"
    return None


def checked_actual(actual: Any, task: str, classes: list[Any] | None) -> Any:
    """``actual`` as stored (a class as /predict answers it, or a float); raises ValueError saying what is wrong."""
    if task == "regression":
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            raise ValueError(f"the model is a regressor: actual must be a number, got {quoted(actual)}")
        try:
            number = float(actual)
        except OverflowError:
            raise ValueError(f"actual is too large: {quoted(actual)}") from None
        if not math.isfinite(number):
            raise ValueError(f"actual must be a finite number, got {quoted(actual)}")
        return number
    classes = classes or []
    for value in classes:
        if _same_class(actual, value):
            return value
    shown = [quoted(value) for value in classes[:10]] + (["..."] if len(classes) > 10 else [])
    for value in classes:
        if isinstance(actual, str) and not isinstance(value, str) and actual.strip() == str(value):
            raise ValueError(
                f"actual {quoted(actual)} is text, but the model's class is {quoted(value)}: send {value!r} as "
                "/predict answers it"
            )
    raise ValueError(f"actual {quoted(actual)} is not one of the model's classes {', '.join(shown)}")


def _same_class(actual: Any, value: Any) -> bool:
    # JSON types must agree: True == 1 and 1 == 1.0 in Python, but a boolean is not the class 1.
    if isinstance(actual, bool) or isinstance(value, bool):
        return isinstance(actual, bool) and isinstance(value, bool) and actual == value
    if isinstance(actual, (int, float)) and isinstance(value, (int, float)):
        return actual == value
    return isinstance(actual, str) and isinstance(value, str) and actual == value


def check_and_store(log: PredictionLog, items: list[dict[str, Any]]) -> int:
    """Check every item against the logged prediction and store them all (or nothing); returns how many were
    stored (a repeated (request id, row) in one body counts once: the last one wins). Blocking: run it in a
    thread. Raises FeedbackError for invalid items, SQLAlchemyError when the log's database fails."""
    log.ensure_tables()
    ids = sorted({item["request_id"] for item in items})
    logged = _logged_requests(log, ids)
    if len(logged) < len(ids):
        log.wait_until_written(PENDING_WRITE_WAIT_SECONDS)
        logged.update(_logged_requests(log, [i for i in ids if i not in logged]))
    outcomes: dict[tuple[str, int], Outcome] = {}
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            outcome = _checked(item, logged.get(item["request_id"]))
        except ValueError as exc:
            errors.append({"item": index, "request_id": item["request_id"], "error": str(exc)})
            continue
        outcomes[(outcome.request_id, outcome.row)] = outcome
    if errors:
        raise FeedbackError(errors)
    received_at = time.time()
    rows = [
        {"request_id": o.request_id, "row_index": o.row, "actual": o.actual, "received_at": received_at}
        for o in outcomes.values()
    ]
    with log.engine.begin() as connection:
        upsert(connection, feedback, rows)
    log.metrics.feedback.inc(len(rows))
    return len(rows)


def _logged_requests(log: PredictionLog, ids: list[str]) -> dict[str, _Logged]:
    table = prediction_requests
    query = select(table.c.request_id, table.c.status_code, table.c.rows, table.c.task, table.c.classes).where(
        table.c.request_id.in_(ids)
    )
    with log.engine.connect() as connection:
        return {
            row.request_id: _Logged(row.status_code, row.rows, row.task, row.classes)
            for row in connection.execute(query)
        }


def _checked(item: dict[str, Any], logged: _Logged | None) -> Outcome:
    request_id, row = item["request_id"], item["row"]
    if logged is None:
        raise ValueError(
            f"unknown request_id {quoted(request_id)}: not in the prediction log (never answered, not sampled, or "
            "dropped while the log's database was unavailable)"
        )
    if logged.status_code != 200 or logged.task is None:
        raise ValueError(f"request {request_id} was refused (HTTP {logged.status_code}): no prediction to compare")
    if row >= logged.rows:
        raise ValueError(
            f"request {request_id} has no row {row}: it predicted {logged.rows} row(s), 0 to {logged.rows - 1}"
        )
    return Outcome(request_id, row, checked_actual(item["actual"], logged.task, logged.classes))
