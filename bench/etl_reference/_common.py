"""Shared bits of the ETL reference scripts: the schema they enforce and the JSON line they print."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlpipeline.config import ColumnSpec, DatasetSchema, default_schema

SCHEMA: DatasetSchema = default_schema()
NUMBERS: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type in ("numeric", "integer")]
CATEGORIES: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type == "categorical"]
BOOLEANS: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type == "boolean"]
DATES: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type == "date"]
TRUE_WORDS = ["true", "1", "yes", "y", "t"]
FALSE_WORDS = ["false", "0", "no", "n", "f"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM). Not getrusage's ru_maxrss: on Linux it survives exec, so
    a script started by a big benchmark process would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def report(started: float, **extra: Any) -> None:
    """The one JSON line the benchmark reads: wall seconds and this process's peak RSS."""
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(), **extra}))
