"""The HTTP endpoints: /health, /live, /model, /reload, /predict, /feedback, /metrics (state lives in
``app.state``).

Only ``POST /reload`` and ``POST /feedback`` change state and they require the bearer token
(:func:`guards.require_token`); the others are open, for callers inside the network (see
:mod:`mlpipeline.serving.guards`).

Every ``/predict`` answer carries a fresh request id in the ``X-Request-ID`` header. With the prediction log on
(``app.state.prediction_log``), an answer queued for the log (every request, or the sampled fraction, unless the
queue is full) also has ``request_id`` in its JSON body: the id ``/feedback`` takes. Logging only queues a record
(:mod:`mlpipeline.serving.prediction_log`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from mlpipeline.serving.feedback import FeedbackError, check_and_store, parse_items
from mlpipeline.serving.guards import Cooldown, clip, error_content, load_json, require_token
from mlpipeline.serving.loading import LoadedModel, Probabilities
from mlpipeline.serving.openapi import PREDICT_OPENAPI, PREDICT_PATH
from mlpipeline.serving.prediction_log import LoggedRequest, PredictionLog
from mlpipeline.serving.schema import InputError
from mlpipeline.serving.settings import ENV_PREDICTION_LOG_URL, ServerSettings
from mlpipeline.serving.state import ModelServer

log = logging.getLogger(__name__)

# Above this many rows the (pure Python) validation runs in the thread pool instead of blocking the event loop;
# above this many bytes, so does JSON parsing.
INLINE_ROWS = 256
INLINE_BODY_BYTES = 64 * 1024

router = APIRouter()


class FastJSONResponse(JSONResponse):
    # Skips FastAPI's jsonable_encoder walk (slow on 10k-float lists); content is plain JSON types already.
    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode("utf-8")


class _Rejected(Exception):
    """A /predict request refused before prediction: the HTTP status and what is wrong."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error(
    status: int, detail: str, errors: list[dict[str, Any]] | None = None, total: int | None = None
) -> JSONResponse:
    return FastJSONResponse(error_content(detail, errors, total), status_code=status)


def _server(request: Request) -> ModelServer:
    return request.app.state.server


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Readiness: 200 while a model is served (``degraded`` if the last reload failed), 503 while none is."""
    status, body = _server(request).health()
    return FastJSONResponse(body, status_code=status)


@router.get("/live")
async def live() -> JSONResponse:
    """Liveness: 200 while the process answers, model or not (for start-up ordering, not for routing traffic)."""
    return FastJSONResponse({"status": "alive"})


@router.get("/model")
async def model_info(request: Request) -> JSONResponse:
    status, body = _server(request).model_body()
    return FastJSONResponse(body, status_code=status)


@router.post("/reload", dependencies=[Depends(require_token)])
def reload(request: Request, force: bool = False) -> JSONResponse:
    """Bring the served model in line with the alias now; ``force`` reloads the same version (rate-limited)."""
    # Sync endpoint: FastAPI runs it in the thread pool, so loading does not block other requests.
    server = _server(request)
    if force:
        cooldown: Cooldown = request.app.state.force_reload_cooldown
        wait = cooldown.take()
        if wait > 0:
            # Without this an authenticated caller could make the server download and load in a loop.
            response = _error(429, f"a forced reload ran less than {cooldown.seconds:g} s ago; retry in {wait:.0f} s")
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
    ok = server.refresh(force=force)
    status, body = server.model_body()
    return FastJSONResponse(body, status_code=status if ok else 503)


async def _parsed(body: bytes) -> Any:
    """A request body as JSON (parsed in the thread pool when large); raises :class:`_Rejected` (422)."""
    try:
        return load_json(body) if len(body) <= INLINE_BODY_BYTES else await run_in_threadpool(load_json, body)
    except ValueError as exc:
        raise _Rejected(422, str(exc)) from None


async def _request_rows(body: bytes, max_rows: int) -> list[Any]:
    """The rows of a /predict body; raises :class:`_Rejected` if the body is not a usable ``{"rows": [...]}``."""
    payload = await _parsed(body)
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise _Rejected(422, 'request body must be an object {"rows": [ {column: value, ...}, ... ]}')
    if not rows:
        raise _Rejected(422, "rows is empty; send at least one row")
    if len(rows) > max_rows:
        raise _Rejected(413, f"too many rows: {len(rows)} > {max_rows}; split the request")
    return rows


async def _predict(model: LoadedModel, rows: list[Any]) -> tuple[list[Any], Probabilities]:
    if len(rows) <= INLINE_ROWS:
        return model.predict_rows(rows)
    return await run_in_threadpool(model.predict_rows, rows)


class _Call:
    """One /predict call as the prediction log sees it: its id, when it started, whether it is logged."""

    __slots__ = ("log", "request_id", "served_at", "started")

    def __init__(self, prediction_log: PredictionLog | None) -> None:
        self.request_id = uuid.uuid4().hex
        self.served_at = time.time()
        self.started = time.perf_counter()
        self.log = prediction_log if prediction_log is not None and prediction_log.sampled() else None

    def record(self, status: int, model: LoadedModel | None, **answer: Any) -> bool:
        """Queue the call for the log; whether it was (not sampled, or the queue is full: False)."""
        if self.log is None:
            return False
        latency_ms = (time.perf_counter() - self.started) * 1000.0
        return self.log.submit(LoggedRequest(self.request_id, self.served_at, latency_ms, status, model, **answer))

    def refused(self, response: JSONResponse, model: LoadedModel | None, detail: str) -> JSONResponse:
        self.record(response.status_code, model, error=clip(detail, 300))
        response.headers["X-Request-ID"] = self.request_id
        return response


@router.post(PREDICT_PATH, openapi_extra=PREDICT_OPENAPI)
async def predict(request: Request) -> JSONResponse:
    server = _server(request)
    call = _Call(request.app.state.prediction_log)
    model = server.model  # read the reference once: a concurrent swap cannot change it mid-request
    if model is None:
        detail = f"no model loaded for {server.model_name!r} (alias {server.alias!r}); try again later"
        return call.refused(_error(503, detail), None, detail)
    settings: ServerSettings = request.app.state.settings
    try:
        rows = await _request_rows(await request.body(), settings.max_rows)
        predictions, probabilities = await _predict(model, rows)
    except _Rejected as exc:
        return call.refused(_error(exc.status, exc.detail), model, exc.detail)
    except InputError as exc:
        detail = f"invalid input: {exc}"
        return call.refused(_error(422, detail, exc.errors, exc.total), model, detail)
    except Exception as exc:
        call.record(500, model, error=f"internal error: {type(exc).__name__}")
        raise
    server.metrics.predictions.inc(len(rows))
    if model.task != "regression":
        server.metrics.count_labels(predictions)
    body = answer_body(model, predictions, probabilities)
    answer = {"rows": rows, "row_count": len(rows), "predictions": predictions, "probabilities": probabilities}
    if call.record(200, model, **answer):
        body["request_id"] = call.request_id  # the id /feedback takes: only for an answer on its way to the log
    return FastJSONResponse(body, headers={"X-Request-ID": call.request_id})


def answer_body(model: LoadedModel, predictions: list[Any], probabilities: Probabilities) -> dict[str, Any]:
    """The /predict answer: a classifier's labels, probabilities and classes; a regressor's numbers only."""
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "predictions": predictions}
    if model.task != "regression":
        body["probabilities"] = probabilities
        body["classes"] = model.class_values
    return body


@router.post("/feedback", dependencies=[Depends(require_token)])
async def post_feedback(request: Request) -> JSONResponse:
    """Store actual outcomes of logged predictions (see :mod:`mlpipeline.serving.feedback`)."""
    prediction_log: PredictionLog | None = request.app.state.prediction_log
    if prediction_log is None:
        return _error(
            404, f"POST /feedback needs the prediction log, and {ENV_PREDICTION_LOG_URL} is not set on the model server"
        )
    try:
        items = parse_items(await _parsed(await request.body()))
        stored = await run_in_threadpool(check_and_store, prediction_log, items)
    except _Rejected as exc:
        return _error(exc.status, exc.detail)
    except FeedbackError as exc:
        return _error(422, str(exc), exc.errors)
    except SQLAlchemyError as exc:
        log.warning("POST /feedback: the prediction log's database failed: %s", type(exc).__name__)
        return _error(503, "the prediction log's database is unavailable; retry later (re-posting is safe)")
    return FastJSONResponse({"stored": stored})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_server(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The paths the metrics label by name; any other path is counted as "other".
ROUTE_PATHS = frozenset(route.path for route in router.routes)
