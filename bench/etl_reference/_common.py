"""Shared bits of the ETL reference scripts: the schema they enforce and the JSON line they print."""

from __future__ import annotations

import json
import resource
import time
from typing import Any

from mlpipeline.config import ColumnSpec, DatasetSchema, default_schema

SCHEMA: DatasetSchema = default_schema()
NUMBERS: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type in ("numeric", "integer")]
CATEGORIES: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type == "categorical"]
BOOLEANS: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type == "boolean"]
DATES: list[ColumnSpec] = [c for c in SCHEMA.columns if c.type == "date"]
TRUE_WORDS = ["true", "1", "yes", "y", "t"]
FALSE_WORDS = ["false", "0", "no", "n", "f"]


def report(started: float, **extra: Any) -> None:
    """The one JSON line the benchmark reads: wall seconds and this process's peak RSS."""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mib": peak_mib, **extra}))
