"""A real SMTP server for laptops and tests: accepts every message and stores it as an ``.eml`` file.

Production points the ``smtp_default`` connection at a real relay instead; the pipeline code is the same.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import signal
import socket
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mlpipeline.storage import atomic_write_bytes


class _StoreHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self._count += 1
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{self._count:04d}.eml"
        atomic_write_bytes(self.directory / name, envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


class MailCatcher:
    """``with MailCatcher(dir) as mail: ... mail.messages()`` — a live SMTP server on 127.0.0.1."""

    def __init__(self, directory: str | Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory)
        if port == 0:
            # aiosmtpd's readiness probe connects to the port it was given, so 0 cannot mean "any".
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self._port = port
        self.controller = Controller(_StoreHandler(self.directory), hostname=host, port=port)

    def start(self) -> MailCatcher:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self._port

    def messages(self) -> list[EmailMessage]:
        return read_mailbox(self.directory)

    def __enter__(self) -> MailCatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_mailbox(directory: str | Path) -> list[EmailMessage]:
    """Messages stored in ``directory``, oldest first."""
    paths = sorted(Path(directory).glob("*.eml"))
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in paths]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--dir", default="mail", help="where to store received messages")
    args = parser.parse_args()
    catcher = MailCatcher(args.dir, port=args.port, host=args.host).start()
    print(f"smtp listening on {args.host}:{args.port}, storing in {args.dir}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    catcher.stop()


if __name__ == "__main__":
    main()
