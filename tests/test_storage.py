"""Atomic writes leave no debris: a writer killed mid-write (SIGKILL, no cleanup) leaves a temp sibling that the
next write to the same target removes, while a live writer's temp is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlpipeline.storage import (
    STALE_TEMP_SECONDS,
    atomic_directory,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    disk_usage,
    pid_is_alive,
    read_json,
    remove_stale_temps,
    temp_sibling,
)

# Starts an atomic write of sys.argv[2] ("directory" or "file" sys.argv[1]), writes part of it, says so, and hangs.
_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mlpipeline.storage import atomic_directory, atomic_path

    kind, target = sys.argv[1], Path(sys.argv[2])
    with (atomic_directory if kind == "directory" else atomic_path)(target) as tmp:
        (tmp / "half.csv" if kind == "directory" else tmp).write_text("half written")
        print(tmp, flush=True)
        time.sleep(600)
    """
)


StartWriter = Callable[[str, Path], tuple[subprocess.Popen[str], Path]]


@pytest.fixture
def writer() -> Iterator[StartWriter]:
    """Start writers that hang mid-write; returns (process, its temp path). Any left running are killed after."""
    started: list[subprocess.Popen[str]] = []

    def start(kind: str, target: Path) -> tuple[subprocess.Popen[str], Path]:
        process = subprocess.Popen(
            [sys.executable, "-c", _WRITER, kind, str(target)], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        temp = Path(process.stdout.readline().strip())
        assert temp.exists(), temp
        return process, temp

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _kill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_killed_directory_writers_temp_is_removed_by_the_next_write(tmp_path: Path, writer: StartWriter) -> None:
    target = tmp_path / "processed" / "run_1"
    process, temp = writer("directory", target)
    assert temp.parent == target.parent and f"-{process.pid}." in temp.name
    _kill(process)
    assert temp.exists()  # SIGKILL ran no cleanup: this is the debris

    with atomic_directory(target) as tmp:
        (tmp / "data.parquet").write_text("complete")

    assert not temp.exists()
    assert (target / "data.parquet").read_text() == "complete"
    assert _hidden(target.parent) == []


def test_a_killed_file_writers_temp_is_removed_by_the_next_write(tmp_path: Path, writer: StartWriter) -> None:
    target = tmp_path / "runs" / "run_1" / "deploy.json"
    process, temp = writer("file", target)
    _kill(process)
    assert temp.read_text() == "half written"

    atomic_write_json(target, {"version": "3"})

    assert read_json(target) == {"version": "3"}
    assert _hidden(target.parent) == []


def test_a_live_writers_temp_is_left_alone(tmp_path: Path, writer: StartWriter) -> None:
    target = tmp_path / "raw" / "run_1"
    process, temp = writer("directory", target)

    with atomic_directory(tmp_path / "raw" / "run_1") as tmp:  # a second writer of the same target
        (tmp / "data.csv").write_text("whole")
    assert temp.exists() and (temp / "half.csv").read_text() == "half written"
    assert remove_stale_temps(target.parent) == []

    _kill(process)
    [(removed, size)] = remove_stale_temps(target.parent)
    assert (removed, size) == (temp, len("half written"))


def test_only_the_targets_own_temps_are_cleaned_by_a_write(tmp_path: Path, writer: StartWriter) -> None:
    process, other_temp = writer("file", tmp_path / "other.json")
    _kill(process)
    atomic_write_text(tmp_path / "mine.json", "{}")
    assert other_temp.exists()
    assert [path for path, _ in remove_stale_temps(tmp_path)] == [other_temp]


def test_temps_whose_writer_cannot_be_checked_wait_for_the_age_limit(tmp_path: Path) -> None:
    target = tmp_path / "model"
    other_host = tmp_path / ".model.another-host-1.0badc0de.tmp"
    legacy = tmp_path / ".model.k3j_x9ab.tmp"  # tempfile's name, from before writers were recorded
    for temp in (other_host, legacy):
        temp.mkdir()
        (temp / "part").write_bytes(b"x" * 10)
    assert remove_stale_temps(tmp_path, target.name) == []

    old = time.time() - STALE_TEMP_SECONDS - 60
    for temp in (other_host, legacy):
        os.utime(temp, (old, old))
    with atomic_directory(target):
        pass
    assert _hidden(tmp_path) == []


def test_an_old_temp_of_a_live_pid_counts_as_stale(tmp_path: Path) -> None:
    # After STALE_TEMP_SECONDS the PID may belong to another process: longer than any task may run.
    temp = temp_sibling(tmp_path / "record.json")
    temp.write_text("{")
    assert remove_stale_temps(tmp_path) == []  # ours, and we are alive
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(temp, (old, old))
    assert [path for path, _ in remove_stale_temps(tmp_path)] == [temp]


def test_temp_names_record_the_writer_and_never_collide(tmp_path: Path) -> None:
    names = {temp_sibling(tmp_path / "x").name for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith(".x.") and f"-{os.getpid()}." in name and name.endswith(".tmp") for name in names)
    with atomic_path(tmp_path / "x") as temp:
        assert temp.parent == tmp_path and f"-{os.getpid()}." in temp.name


def test_a_killed_but_unreaped_process_is_dead() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert pid_is_alive(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_is_alive(process.pid) and time.monotonic() < deadline:  # a zombie until waited for
            time.sleep(0.05)
        assert not pid_is_alive(process.pid)
    finally:
        process.kill()
        process.wait()


def test_disk_usage_counts_files_below_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one").write_bytes(b"1" * 100)
    (tmp_path / "a" / "b" / "two").write_bytes(b"2" * 23)
    assert disk_usage(tmp_path / "a") == 123
    assert disk_usage(tmp_path / "a" / "one") == 100
    assert disk_usage(tmp_path / "missing") == 0
    # What deleting would free: a file hard-linked elsewhere (an unchanged crawl's data file) frees nothing.
    os.link(tmp_path / "a" / "one", tmp_path / "shared")
    assert disk_usage(tmp_path / "a") == 123
    assert disk_usage(tmp_path / "a", unshared_only=True) == 23
