"""The HTTP endpoints: /health, /live, /model, /reload, /predict, /metrics (state lives in ``app.state``).

Only ``POST /reload`` changes state and it requires the bearer token (:func:`guards.require_token`); the others are
open, for callers inside the network (see :mod:`mlpipeline.serving.guards`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlpipeline.serving.guards import Cooldown, error_content, load_json, require_token
from mlpipeline.serving.loading import LoadedModel, Probabilities
from mlpipeline.serving.openapi import PREDICT_OPENAPI, PREDICT_PATH
from mlpipeline.serving.schema import InputError
from mlpipeline.serving.settings import ServerSettings
from mlpipeline.serving.state import ModelServer

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


async def _request_rows(body: bytes, max_rows: int) -> list[Any]:
    """The rows of a /predict body; raises :class:`_Rejected` if the body is not a usable ``{"rows": [...]}``."""
    try:
        payload = load_json(body) if len(body) <= INLINE_BODY_BYTES else await run_in_threadpool(load_json, body)
    except ValueError as exc:
        raise _Rejected(422, str(exc)) from None
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


@router.post(PREDICT_PATH, openapi_extra=PREDICT_OPENAPI)
async def predict(request: Request) -> JSONResponse:
    server = _server(request)
    model = server.model  # read the reference once: a concurrent swap cannot change it mid-request
    if model is None:
        return _error(503, f"no model loaded for {server.model_name!r} (alias {server.alias!r}); try again later")
    settings: ServerSettings = request.app.state.settings
    try:
        rows = await _request_rows(await request.body(), settings.max_rows)
        predictions, probabilities = await _predict(model, rows)
    except _Rejected as exc:
        return _error(exc.status, exc.detail)
    except InputError as exc:
        return _error(422, f"invalid input: {exc}", exc.errors, exc.total)
    server.metrics.predictions.inc(len(rows))
    return FastJSONResponse(answer_body(model, predictions, probabilities))


def answer_body(model: LoadedModel, predictions: list[Any], probabilities: Probabilities) -> dict[str, Any]:
    """The /predict answer: a classifier's labels, probabilities and classes; a regressor's numbers only."""
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "predictions": predictions}
    if model.task != "regression":
        body["probabilities"] = probabilities
        body["classes"] = model.class_values
    return body


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_server(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The paths the metrics label by name; any other path is counted as "other".
ROUTE_PATHS = frozenset(route.path for route in router.routes)
