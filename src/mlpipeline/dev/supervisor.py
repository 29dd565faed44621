"""Compose's ``restart: always`` for local processes: a crashed service is started again after a back-off.

The back-off starts at ``initial_delay``, doubles on every crash up to ``max_delay`` and is reset once a service
stayed up for ``reset_after`` seconds (Docker's restart policy works the same way: 100 ms doubling, reset after
10 s up). Stopping the supervisor, or holding one service (``docker compose stop``), restarts nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from mlpipeline.dev.localstack import ManagedProcess

# Compose restart policies under which a service that exits on its own is started again.
RESTARTING_POLICIES = frozenset({"always", "unless-stopped"})


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 1.0
    max_delay: float = 30.0
    reset_after: float = 60.0


@dataclass
class _ServiceState:
    delay: float
    started_at: float
    restart_at: float | None = None  # set while a crashed service waits for its back-off
    restarts: int = 0


@dataclass
class Supervisor:
    """Watches ``processes`` (by name) and restarts the ``restartable`` ones that exit, in a background thread."""

    processes: Mapping[str, ManagedProcess]
    restartable: frozenset[str]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    log: Callable[[str], None] = _log_to_stderr
    interval: float = 0.2
    _states: dict[str, _ServiceState] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        now = time.monotonic()
        for name in self.restartable:
            self._states[name] = _ServiceState(self.policy.initial_delay, now)
        self._thread = threading.Thread(target=self._run, name="stack-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No restart after this returns (a restart in progress finishes first, under the lock)."""
        self._stopping.set()
        with self._lock:
            pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    def restarts(self, name: str) -> int:
        state = self._states.get(name)
        return state.restarts if state else 0

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        """``docker compose stop NAME`` ... ``start NAME``: while held, the service is not restarted."""
        with self._lock:
            self._held.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(name)
                if name in self._states:
                    self._states[name] = _ServiceState(self.policy.initial_delay, time.monotonic())

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                if self._stopping.is_set():
                    return
                for name in sorted(self.restartable - self._held):
                    self._check(name, self.processes[name], time.monotonic())

    def _check(self, name: str, process: ManagedProcess, now: float) -> None:
        state = self._states[name]
        if process.alive():
            if now - state.started_at >= self.policy.reset_after:
                state.delay = self.policy.initial_delay
            return
        if state.restart_at is None:
            returncode = process.popen.returncode if process.popen else None
            self.log(f"service {name} exited with rc {returncode}; restarting in {state.delay:g} s")
            state.restart_at = now + state.delay
            state.delay = min(state.delay * 2, self.policy.max_delay)
        elif now >= state.restart_at:
            process.stop()  # closes its log file; start() opens it again, appending
            process.start()
            state.started_at, state.restart_at = now, None
            state.restarts += 1
            self.log(f"service {name} restarted (pid {process.popen.pid if process.popen else '?'})")
