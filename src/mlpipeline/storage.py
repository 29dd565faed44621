"""Where data lives, and how it is written: atomically (temp file + rename), never half-written.

A temp sibling is named ``.<target>.<host>-<pid>.<random>.tmp`` after its writer, so a writer killed mid-write
(SIGKILL runs no cleanup) leaves debris that the next write to the same target recognises and removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def local_path(path_or_uri: str | os.PathLike[str]) -> Path:
    """Accept a plain path or a ``file://`` URI."""
    text = os.fspath(path_or_uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ValueError(f"only local paths and file:// URIs are supported here, got {text!r}")
    return Path(text)


def run_key(run_id: str) -> str:
    """A directory-safe, stable name for an Airflow run id (``manual__2026-01-01T00:00:00+00:00``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._")
    if not key:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return key


@dataclass(frozen=True)
class DataLayout:
    """``<root>/raw/<run>/``, ``processed/<run>/``, ``models/<run>/`` and ``runs/<run>/`` (result records)."""

    root: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str]) -> DataLayout:
        return cls(local_path(data_dir).resolve())

    def raw(self, run: str) -> Path:
        return self.root / "raw" / run

    def processed(self, run: str) -> Path:
        return self.root / "processed" / run

    def models(self, run: str) -> Path:
        """What training produced for a run, one subdirectory per candidate: held-out rows, metrics, the MLflow
        run it logged to."""
        return self.root / "models" / run

    def run_records(self, run: str) -> Path:
        """One small JSON result record per task: what the run decided and where its outputs are."""
        return self.root / "runs" / run

    @property
    def state(self) -> Path:
        """Small mutable bookkeeping (e.g. the last ETag seen per source)."""
        return self.root / "state"


# A temp entry whose writer cannot be checked (another host, or a PID that may have been reused) is stale after
# this long: longer than any task's execution_timeout (training: 2 h), so a live writer is never robbed.
STALE_TEMP_SECONDS = 6 * 3600.0
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.(?P<token>[0-9a-f]+)\.tmp$")
# Names from before writers were recorded (tempfile's ".<target>.<random>.tmp"): judged by age only.
_LEGACY_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:40] or "host"


def temp_sibling(final: Path) -> Path:
    """A fresh temp name beside ``final`` that records this writer (host, PID)."""
    return final.parent / f".{final.name}.{_host_tag()}-{os.getpid()}.{secrets.token_hex(4)}.tmp"


def pid_is_alive(pid: int) -> bool:
    """True if a process with this PID runs on this machine (a zombie, killed but not yet reaped, is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill()
    return state not in ("Z", "X")


def _is_stale(entry: Path, match: re.Match[str], now: float) -> bool:
    try:
        age = now - entry.lstat().st_mtime
    except FileNotFoundError:
        return False  # its writer renamed or removed it meanwhile
    if age > STALE_TEMP_SECONDS:
        return True
    if "pid" not in match.groupdict() or match["host"] != _host_tag():
        return False  # cannot check the writer: wait for the age limit
    return int(match["pid"]) != os.getpid() and not pid_is_alive(int(match["pid"]))


def remove_stale_temps(directory: str | os.PathLike[str], target: str | None = None) -> list[tuple[Path, int]]:
    """Delete the temp entries in ``directory`` (only those of ``target`` if given) whose writer is dead; return
    each removed path with the bytes it held. Never touches this process's own or another live writer's."""
    removed: list[tuple[Path, int]] = []
    now = time.time()
    try:
        entries = [entry for entry in Path(directory).iterdir() if entry.name.endswith(".tmp")]
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name) or _LEGACY_TEMP_NAME.match(entry.name)
        if match is None or (target is not None and match["target"] != target) or not _is_stale(entry, match, now):
            continue
        size = disk_usage(entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append((entry, size))
    return removed


def disk_usage(path: str | os.PathLike[str], *, unshared_only: bool = False) -> int:
    """Bytes of the files under ``path`` (or of the file itself); entries vanishing meanwhile count 0.
    ``unshared_only``: count only files with no other hard link, i.e. what deleting ``path`` would free (an
    unchanged crawl hard-links the previous snapshot's data file)."""
    root = Path(path)
    try:
        if not root.is_dir() or root.is_symlink():
            return _file_bytes(root, unshared_only)
    except FileNotFoundError:
        return 0
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            total += _file_bytes(Path(folder, name), unshared_only)
    return total


def _file_bytes(path: Path, unshared_only: bool) -> int:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    return 0 if unshared_only and info.st_nlink > 1 else info.st_size


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``final``; rename it over ``final`` only if the block succeeds."""
    final_path = Path(final)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final_path.parent, final_path.name)
    tmp_path = temp_sibling(final_path)
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, final_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temp name and rename it into place only when complete.

    Refuses to replace an existing directory: snapshots are immutable. Temp directories of earlier writers of
    ``final`` that died mid-write are removed first.
    """
    final_path = Path(final)
    if final_path.exists():
        raise FileExistsError(f"{final_path} already exists and is immutable")
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final_path.parent, final_path.name)
    tmp_path = temp_sibling(final_path)
    tmp_path.mkdir(mode=0o700)
    try:
        yield tmp_path
        os.rename(tmp_path, final_path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
