"""A source that misbehaves on purpose: a real HTTP server on 127.0.0.1 whose routes the test writes.

Each route is a function ``(handler) -> None`` that writes the whole answer, so a test can redirect anywhere,
link to another origin, trickle bytes or serve a crafted file. Every request's path is recorded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

Route = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the crawler hung up, as it should
            route(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    requests: list[str]


class HostileSource:
    """``with HostileSource({"/path": route}) as source:`` serves the routes at ``source.url``."""

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.routes = dict(routes or {})
        self.server.requests = []
        self.stopping = threading.Event()  # routes that stream forever stop when it is set
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def route(self, path: str, handler: Route) -> None:
        self.server.routes[path] = handler

    def __enter__(self) -> HostileSource:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    """A complete answer with a Content-Length."""
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str, status: int = 302) -> Route:
    return lambda handler: send(handler, status, b"redirect body that must never be quoted", Location=location)


def serve(body: bytes, content_type: str, **headers: str) -> Route:
    return lambda handler: send(handler, 200, body, Content_Type=content_type, **headers)
