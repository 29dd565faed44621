"""How ``run`` shows its stages: on a terminal a spinner while a stage works and a line when it is done (rich);
elsewhere (a pipe, a log file, CI) plain timestamped lines, one when a stage starts and one when it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

T = TypeVar("T")
NAME_WIDTH = 9


class StageFailed(Exception):
    """A stage raised: ``stage`` names it, ``__cause__`` is what it raised."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage} failed: {cause}")
        self.stage = stage
        self.cause = cause


class Progress:
    """Runs stages and shows them. ``fancy`` None: rich when ``stream`` is a terminal."""

    def __init__(self, stream: TextIO | None = None, *, fancy: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.fancy = self.stream.isatty() if fancy is None else fancy
        self._console = None
        if self.fancy:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)

    def step(self, name: str, work: Callable[[], T], summary: Callable[[T], str] | None = None) -> T:
        """Run ``work`` as stage ``name``; show how long it took and ``summary(result)``. StageFailed if it raises."""
        started = time.monotonic()
        try:
            if self._console is not None:
                with self._console.status(f"[bold]{name}[/] …", spinner="dots"):
                    result = work()
            else:
                self._plain(f"{name:<{NAME_WIDTH}} started")
                result = work()
        except Exception as exc:
            self._line("✗", "red", name, f"FAILED after {time.monotonic() - started:.1f} s")
            raise StageFailed(name, exc) from exc
        described = summary(result) if summary is not None else ""
        self._line("✓", "green", name, f"{time.monotonic() - started:5.1f} s  {described}".rstrip())
        return result

    def skip(self, name: str, why: str) -> None:
        self._line("-", "yellow", name, f"skipped: {why}")

    def note(self, text: str) -> None:
        """A detail under the last stage (a reason, an alert)."""
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(" " * (NAME_WIDTH + 4) + text, style="dim"))
        else:
            self._plain(" " * (NAME_WIDTH + 1) + text)

    def _line(self, mark: str, colour: str, name: str, text: str) -> None:
        if self._console is not None:
            from rich.text import Text

            line = Text.assemble((f"{mark} ", colour), (f"{name:<{NAME_WIDTH}} ", "bold"), text)
            self._console.print(line)
        else:
            self._plain(f"{name:<{NAME_WIDTH}} {'done in ' + text.strip() if mark == '✓' else text}")

    def _plain(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)
