"""The FastAPI app factory: one app serves ``models:/<name>@<alias>`` and follows the alias.

Its guards (:mod:`mlpipeline.serving.guards`): ``POST /reload`` and ``POST /feedback`` need the bearer token, request
bodies are capped before they are read, error bodies stay small; ``/predict``, ``/health``, ``/live``, ``/model`` and
``/metrics`` are open to whoever can reach the port, which is meant to be inside the network only.

With a prediction log URL (``MLPIPELINE_PREDICTION_LOG_URL``) every ``/predict`` request, or the sampled fraction, is
queued for the log's writer process (started and flushed by the lifespan), and ``POST /feedback`` takes outcomes.

Run it with ``uvicorn --factory mlpipeline.serving:app_from_env`` or ``python -m mlpipeline.serving --port 8000``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mlpipeline.constants import DEFAULT_ALIAS
from mlpipeline.serving import openapi
from mlpipeline.serving.guards import BodyLimitMiddleware, Cooldown, error_content
from mlpipeline.serving.metrics import MetricsMiddleware
from mlpipeline.serving.prediction_log import PredictionLog
from mlpipeline.serving.routes import ROUTE_PATHS, router
from mlpipeline.serving.settings import (
    DEFAULT_FORCE_RELOAD_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_POLL_SECONDS,
    DEFAULT_PREDICTION_LOG_BUFFER,
    DEFAULT_PREDICTION_LOG_SAMPLE,
    ENV_PREDICTION_LOG_URL,
    ENV_SERVING_TOKEN,
    ServerSettings,
    serving_token_from,
)
from mlpipeline.serving.state import ModelServer

log = logging.getLogger(__name__)

# On shutdown the prediction log's queue is written for at most this long (the rest is counted as dropped).
PREDICTION_LOG_FLUSH_SECONDS = 5.0


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    server: ModelServer = app.state.server
    prediction_log: PredictionLog | None = app.state.prediction_log
    if prediction_log is not None:
        prediction_log.start()  # creates the tables in the background: a database that is down delays nothing
    # A missing champion or an unreachable registry must not stop the server: it answers 503 until it can load.
    await run_in_threadpool(server.refresh)
    server.start_polling()
    try:
        yield
    finally:
        await run_in_threadpool(server.stop_polling)
        if prediction_log is not None:
            await run_in_threadpool(prediction_log.close, PREDICTION_LOG_FLUSH_SECONDS)


def app_for(settings: ServerSettings) -> FastAPI:
    """Build the server app. The first load happens at startup (lifespan), then the alias is polled."""
    server = ModelServer(
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        alias=settings.alias,
        poll_seconds=settings.poll_seconds,
    )
    app = FastAPI(title="mlpipeline model server", version="1", lifespan=_lifespan)
    app.state.server = server
    app.state.settings = settings
    app.state.force_reload_cooldown = Cooldown(settings.force_reload_seconds)
    app.state.prediction_log = None
    if settings.prediction_log_url is not None:
        app.state.prediction_log = PredictionLog(
            settings.prediction_log_url,
            metrics=server.metrics,
            sample=settings.prediction_log_sample,
            capacity=settings.prediction_log_buffer,
        )
    else:
        log.info("%s is not set: predictions are not logged, POST /feedback is off", ENV_PREDICTION_LOG_URL)
    if settings.serving_token is None:
        log.warning(
            "%s is not set: POST /reload is disabled (the alias poller keeps the model current)", ENV_SERVING_TOKEN
        )
    # Added first, so it runs inside the metrics middleware: refused bodies are counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics, endpoints=ROUTE_PATHS)
    app.add_exception_handler(RequestValidationError, _bounded_validation_error)
    app.include_router(router)
    openapi.install(app, lambda: server.model)
    return app


async def _bounded_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler echoes every offending input back, unbounded.
    errors = [{"where": list(e.get("loc", ())), "error": str(e.get("msg", ""))} for e in exc.errors()[:5]]
    return JSONResponse(error_content("invalid request", errors), status_code=422)


def create_app(
    *,
    tracking_uri: str,
    model_name: str,
    alias: str = DEFAULT_ALIAS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    force_reload_seconds: float = DEFAULT_FORCE_RELOAD_SECONDS,
    serving_token: str | None = None,
    prediction_log_url: str | None = None,
    prediction_log_sample: float = DEFAULT_PREDICTION_LOG_SAMPLE,
    prediction_log_buffer: int = DEFAULT_PREDICTION_LOG_BUFFER,
) -> FastAPI:
    """Build the server app for explicit settings (see :class:`ServerSettings`).

    The bearer token is a secret, so by default (None) it comes from ``$MLPIPELINE_SERVING_TOKEN`` as in a
    deployment; ``""`` builds an app whose state-changing endpoints are disabled.
    """
    token = serving_token_from(os.environ) if serving_token is None else serving_token
    return app_for(
        ServerSettings(
            tracking_uri,
            model_name,
            alias,
            poll_seconds,
            max_rows,
            max_body_bytes=max_body_bytes,
            force_reload_seconds=force_reload_seconds,
            serving_token=token,
            prediction_log_url=prediction_log_url,
            prediction_log_sample=prediction_log_sample,
            prediction_log_buffer=prediction_log_buffer,
        )
    )


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory mlpipeline.serving:app_from_env`` (settings from the environment)."""
    return app_for(ServerSettings.from_env())
