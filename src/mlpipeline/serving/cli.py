"""Running a server: in the foreground (``python -m mlpipeline.serving``) or on a background thread (tests, demos)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence

import uvicorn
from fastapi import FastAPI

from mlpipeline.constants import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from mlpipeline.serving.app import app_from_env
from mlpipeline.serving.settings import (
    DEFAULT_FORCE_RELOAD_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_POLL_SECONDS,
    DEFAULT_PREDICTION_LOG_BUFFER,
    DEFAULT_PREDICTION_LOG_SAMPLE,
    ENV_ALIAS,
    ENV_FORCE_RELOAD_SECONDS,
    ENV_MAX_BODY_BYTES,
    ENV_MAX_ROWS,
    ENV_MODEL_NAME,
    ENV_POLL_SECONDS,
    ENV_PREDICTION_LOG_BUFFER,
    ENV_PREDICTION_LOG_SAMPLE,
    ENV_PREDICTION_LOG_URL,
    ENV_SERVING_TOKEN,
    ENV_TRACKING_URI,
)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that reports once it is started (after the lifespan, i.e. the first model load)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], object]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_started()


class ServerThread:
    """Run an app with uvicorn on a background thread; ``port=0`` picks a free port. Use as a context manager."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self._sock = _bind(host, port)
        self.url = _url(self._sock)
        self._started = threading.Event()
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False)
        self._server = _AnnouncingServer(config, self._started.set)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.url}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # SystemExit on a failed startup included
            self._error = exc
            self._started.set()

    def start(self, timeout: float = 60.0) -> str:
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"server at {self.url} did not start: {self._error!r}")
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in the background for the duration of the block; yields the base URL."""
    with ServerThread(app, host, port) as server:
        yield server.url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.serving",
        description="FastAPI model server for the registered champion model.",
        # The token is a secret: it has no option, so it never shows on a command line.
        epilog=f"POST /reload needs 'Authorization: Bearer <token>' with the token from ${ENV_SERVING_TOKEN} (unset: "
        f"the endpoint is disabled). Request limits: ${ENV_MAX_BODY_BYTES} (default {DEFAULT_MAX_BODY_BYTES}), "
        f"${ENV_MAX_ROWS} (default {DEFAULT_MAX_ROWS}); forced reloads at most every ${ENV_FORCE_RELOAD_SECONDS} "
        f"(default {DEFAULT_FORCE_RELOAD_SECONDS:g}) seconds. Prediction log: ${ENV_PREDICTION_LOG_URL} (a "
        f"SQLAlchemy URL; unset: nothing is logged and POST /feedback is off), ${ENV_PREDICTION_LOG_SAMPLE} (fraction "
        f"of requests logged, default {DEFAULT_PREDICTION_LOG_SAMPLE:g}), ${ENV_PREDICTION_LOG_BUFFER} (predicted rows "
        f"queued for its writer at most, default {DEFAULT_PREDICTION_LOG_BUFFER}).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed when ready)")
    parser.add_argument("--tracking-uri", default=None, help=f"default: ${ENV_TRACKING_URI}")
    parser.add_argument("--model-name", default=None, help=f"default: ${ENV_MODEL_NAME} or {DEFAULT_MODEL_NAME}")
    parser.add_argument("--alias", default=None, help=f"default: ${ENV_ALIAS} or {DEFAULT_ALIAS}")
    parser.add_argument(
        "--poll-seconds", type=float, default=None, help=f"default: ${ENV_POLL_SECONDS} or {DEFAULT_POLL_SECONDS:g}"
    )
    parser.add_argument("--log-level", default="info")
    return parser


def _export_options(args: argparse.Namespace) -> None:
    """Options given on the command line override the environment app_from_env reads."""
    overrides = {
        ENV_TRACKING_URI: args.tracking_uri,
        ENV_MODEL_NAME: args.model_name,
        ENV_ALIAS: args.alias,
        ENV_POLL_SECONDS: None if args.poll_seconds is None else str(args.poll_seconds),
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _export_options(args)
    try:
        app = app_from_env()
    except (RuntimeError, ValueError) as exc:
        parser.error(str(exc))
    sock = _bind(args.host, args.port)
    url = _url(sock)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="on")
    server = _AnnouncingServer(config, lambda: print(f"serving {url}", flush=True))
    server.run(sockets=[sock])
    return 0
