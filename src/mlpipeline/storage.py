"""Where data lives, and how it is written: atomically (temp file + rename), never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``final``; rename it over ``final`` only if the block succeeds."""
    final_path = Path(final)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
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

    Refuses to replace an existing directory: snapshots are immutable.
    """
    final_path = Path(final)
    if final_path.exists():
        raise FileExistsError(f"{final_path} already exists and is immutable")
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent))
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
