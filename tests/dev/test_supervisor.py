"""The process stack restarts crashed services like compose's ``restart: always``: with a back-off, a log line,
only the services compose marks so, and never after stop()."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mlpipeline.dev.localstack import ManagedProcess
from mlpipeline.dev.stack import START_ORDER, Postgres, ProcessStack, Redis
from mlpipeline.dev.supervisor import RESTARTING_POLICIES, RestartPolicy, Supervisor

FAST = RestartPolicy(initial_delay=0.2, max_delay=0.8, reset_after=60)


def _exits_at_once(tmp_path: Path, name: str, code: int = 3) -> ManagedProcess:
    argv = [sys.executable, "-c", f"print('up'); import sys; sys.exit({code})"]
    return ManagedProcess(name, argv, {}, tmp_path / f"{name}.log").start()


def _sleeps(tmp_path: Path, name: str) -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / f"{name}.log")


def _wait_for(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_crashing_service_is_restarted_with_a_doubling_back_off_and_a_log_line(tmp_path: Path) -> None:
    lines: list[tuple[float, str]] = []
    crashing = _exits_at_once(tmp_path, "crashy")
    supervisor = Supervisor(
        {"crashy": crashing}, frozenset({"crashy"}), FAST, lambda line: lines.append((time.monotonic(), line)), 0.02
    )
    supervisor.start()
    try:
        _wait_for(lambda: supervisor.restarts("crashy") >= 4)
    finally:
        supervisor.stop()
        crashing.stop()
    exits = [(at, line) for at, line in lines if "exited" in line]
    assert exits[0][1] == "service crashy exited with rc 3; restarting in 0.2 s"
    assert [line.rsplit(" in ", 1)[1] for _, line in exits[:4]] == ["0.2 s", "0.4 s", "0.8 s", "0.8 s"]
    # The back-off is honoured: each exit to the next restart takes at least the announced delay.
    restarts = [at for at, line in lines if "restarted" in line]
    assert restarts[1] - exits[1][0] >= 0.4 - 0.05
    assert (tmp_path / "crashy.log").read_text().count("up") >= 4  # the log is appended to, not truncated


def test_the_back_off_resets_after_a_service_stayed_up(tmp_path: Path) -> None:
    lines: list[str] = []
    process = _exits_at_once(tmp_path, "svc")
    policy = RestartPolicy(initial_delay=0.2, max_delay=5, reset_after=0.3)
    supervisor = Supervisor({"svc": process}, frozenset({"svc"}), policy, lines.append, 0.02).start()
    try:
        _wait_for(lambda: supervisor.restarts("svc") >= 2)  # delays 0.2 then 0.4; the next would be 0.8
        with supervisor.held("svc"):
            process.stop()
            process.argv = [sys.executable, "-c", "import time; time.sleep(0.6)"]  # stays up longer than 0.3 s
            process.start()
        _wait_for(lambda: supervisor.restarts("svc") >= 1 and any("0.2 s" in line for line in lines[3:]))
    finally:
        supervisor.stop()
        process.stop()
    assert "restarting in 0.2 s" in [line for line in lines if "exited" in line][-1]


def test_only_restartable_services_restart_and_stop_restarts_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    once = _exits_at_once(tmp_path, "one-shot")
    longrunning = _sleeps(tmp_path, "server").start()
    supervisor = Supervisor({"one-shot": once, "server": longrunning}, frozenset({"server"}), FAST, lines.append, 0.02)
    supervisor.start()
    time.sleep(0.5)
    assert not once.alive() and supervisor.restarts("one-shot") == 0 and lines == []
    supervisor.stop()
    longrunning.stop()  # as ProcessStack.down() does: supervisor first, then the services
    time.sleep(0.5)
    assert not longrunning.alive() and supervisor.restarts("server") == 0 and lines == []


def test_a_held_service_is_not_restarted(tmp_path: Path) -> None:
    lines: list[str] = []
    server = _sleeps(tmp_path, "server").start()
    supervisor = Supervisor({"server": server}, frozenset({"server"}), FAST, lines.append, 0.02).start()
    try:
        with supervisor.held("server"):
            server.stop()
            time.sleep(0.6)
            assert not server.alive() and lines == []
            server.start()
        time.sleep(0.3)
        assert server.alive() and supervisor.restarts("server") == 0
    finally:
        supervisor.stop()
        server.stop()


def test_the_process_stack_restarts_what_compose_restarts(tmp_path: Path) -> None:
    stack = ProcessStack(
        root=tmp_path,
        postgres=Postgres("127.0.0.1", 5432, "u", "p", "a", "m"),
        redis=Redis("127.0.0.1", 6379, 0, "r"),
    )
    specs = stack.services()
    # Every long-running service is restart: always in compose; the one-shot init is not.
    assert {name for name in START_ORDER if specs[name].restart in RESTARTING_POLICIES} == set(START_ORDER)
    assert specs["airflow-init"].restart not in RESTARTING_POLICIES
