"""What the server refuses before doing any work: anonymous state changes, forced reloads in a loop, oversized or
pathological request bodies; and error bodies of bounded size.

Who may do what: ``POST /reload`` (and any later state-changing endpoint) needs ``Authorization: Bearer <token>``
with the token from ``MLPIPELINE_SERVING_TOKEN`` (:func:`require_token`); ``/predict``, ``/health``, ``/live``,
``/model`` and ``/metrics`` are open and meant for callers inside the network only (publish the port with care).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request

from mlpipeline.serving.settings import ENV_SERVING_TOKEN, ServerSettings
from mlpipeline.text import clip

log = logging.getLogger(__name__)

# Error responses stay below this size whatever the request was (a 7.6 MB request once produced an 11.6 MB error).
MAX_ERROR_BODY_BYTES = 4096


# --------------------------------------------------------------------------------------------------------------
# Authentication of state-changing endpoints.
# --------------------------------------------------------------------------------------------------------------


def require_token(request: Request) -> None:
    """FastAPI dependency of every state-changing endpoint: the caller must present the configured bearer token.

    No token configured: 403, the endpoint is off (the alias poller keeps the model current). Missing or wrong
    token: 401 with ``WWW-Authenticate: Bearer``. The comparison takes constant time.
    """
    settings: ServerSettings = request.app.state.settings
    endpoint = f"{request.method} {request.url.path}"
    if settings.serving_token is None:
        raise HTTPException(403, f"{endpoint} is disabled: {ENV_SERVING_TOKEN} is not set")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        _refused(request, endpoint, "no bearer token")
        raise HTTPException(
            401, f"{endpoint} requires 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    if not secrets.compare_digest(given.strip().encode(), settings.serving_token.encode()):
        _refused(request, endpoint, "wrong bearer token")
        raise HTTPException(
            401, f"{endpoint}: invalid bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )


def _refused(request: Request, endpoint: str, why: str) -> None:
    client = request.client.host if request.client else "unknown client"
    log.warning("refused %s from %s: %s", endpoint, client, why)  # never the token itself


class Cooldown:
    """At most one event per ``seconds`` (thread-safe: sync endpoints run on the thread pool)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def take(self) -> float:
        """0.0 if the event may happen now (and it is counted), else the seconds until it may."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.seconds:
                return self.seconds - (now - self._last)
            self._last = now
            return 0.0


# --------------------------------------------------------------------------------------------------------------
# Request bodies.
# --------------------------------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 before they are read (declared Content-Length) or as soon as the
    streamed bytes pass the limit (chunked bodies). The server then only discards the rest: memory stays flat."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"{declared} bytes")
            return
        received = 0
        responded = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watching_send(message: dict[str, Any]) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLarge:
            if responded:  # cannot happen with our endpoints (they read the body first); never send twice
                raise
            await self._refuse(send, f"more than {self.max_bytes} bytes")

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps(
            {"detail": f"request body too large ({size}); at most {self.max_bytes} bytes, split the request"}
        ).encode()
        # No "Connection: close": closing while the client is still sending makes it see a reset instead of this
        # answer; uvicorn discards the rest of the body and keeps the connection.
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses a malformed one before the app sees it
    return None


def load_json(body: bytes) -> Any:
    """Parse a request body; raises ValueError with a short message for invalid or too deeply nested JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        # The C decoder counts its nesting against the recursion limit and stops cleanly: no crash, no reset.
        raise ValueError("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"request body is not valid JSON: {clip(str(exc), 200)}") from None


# --------------------------------------------------------------------------------------------------------------
# Bounded error bodies.
# --------------------------------------------------------------------------------------------------------------


def error_content(detail: str, errors: list[dict[str, Any]] | None = None, total: int | None = None) -> dict:
    """An error body under MAX_ERROR_BODY_BYTES: the detail clipped, as many listed errors as fit, and the count."""
    content: dict[str, Any] = {"detail": clip(detail)}
    if errors is None:
        return content
    budget = MAX_ERROR_BODY_BYTES - len(json.dumps(content)) - 64  # the keys and count below
    kept = []
    for error in errors:
        budget -= len(json.dumps(error)) + 1
        if budget < 0:
            break
        kept.append(error)
    content["errors"] = kept
    content["error_count"] = len(errors) if total is None else total
    return content
