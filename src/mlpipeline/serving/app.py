"""The FastAPI app factory: one app serves ``models:/<name>@<alias>`` and follows the alias.

Run it with ``uvicorn --factory mlpipeline.serving:app_from_env`` or ``python -m mlpipeline.serving --port 8000``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from mlpipeline.constants import DEFAULT_ALIAS
from mlpipeline.serving.metrics import MetricsMiddleware
from mlpipeline.serving.routes import ROUTE_PATHS, router
from mlpipeline.serving.settings import DEFAULT_MAX_ROWS, DEFAULT_POLL_SECONDS, ServerSettings
from mlpipeline.serving.state import ModelServer


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    server: ModelServer = app.state.server
    # A missing champion or an unreachable registry must not stop the server: it answers 503 until it can load.
    await run_in_threadpool(server.refresh)
    server.start_polling()
    try:
        yield
    finally:
        await run_in_threadpool(server.stop_polling)


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
    app.add_middleware(MetricsMiddleware, metrics=server.metrics, endpoints=ROUTE_PATHS)
    app.include_router(router)
    return app


def create_app(
    *,
    tracking_uri: str,
    model_name: str,
    alias: str = DEFAULT_ALIAS,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> FastAPI:
    """Build the server app for explicit settings (see :class:`ServerSettings`)."""
    return app_for(ServerSettings(tracking_uri, model_name, alias, poll_seconds, max_rows))


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory mlpipeline.serving:app_from_env`` (settings from the environment)."""
    return app_for(ServerSettings.from_env())
