"""Shared helpers for the benchmarks: robust statistics, machine facts, result files and BENCHMARKS.md sections.

Every benchmark compares against a baseline measured in the same run (the machines are shared and noisy), reports
medians over repeats with the spread (min-max), and never asserts on time: benchmarks are not tests.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
# BENCH_OUT=<dir> sends the results and a copy of BENCHMARKS.md there instead (e.g. to time a quick run without
# replacing the committed full-run tables).
_OUT = Path(os.environ["BENCH_OUT"]) if os.environ.get("BENCH_OUT") else None
RESULTS_DIR = _OUT / "results" if _OUT else BENCH_DIR / "results"
BENCHMARKS_MD = _OUT / "BENCHMARKS.md" if _OUT else REPO_ROOT / "BENCHMARKS.md"
PYTHON = sys.executable


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated measurements."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": len(self.values), "values": self.values}

    def fmt(self, unit: str = "s", digits: int = 2, scale: float = 1.0) -> str:
        """``1.23 s (1.20-1.31, n=5)``: the median, then the range over the repeats."""
        m, lo, hi = (v * scale for v in (self.median, self.low, self.high))
        if len(self.values) == 1:
            return f"{m:.{digits}f} {unit}".strip()
        return f"{m:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f}, n={len(self.values)})"


def stats(values: Sequence[float]) -> Stats:
    if not values:
        raise ValueError("no measurements")
    return Stats(tuple(float(v) for v in values))


def jsonable(value: Any) -> Any:
    """Measurements as plain JSON: Stats become their dict (median, min, max, n, values), recursively."""
    if isinstance(value, Stats):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def ratio(numerator: Stats, denominator: Stats) -> float:
    """Ratio of medians (each side is already a median over repeats)."""
    return numerator.median / denominator.median if denominator.median else float("inf")


def repeat(function: Callable[[], Any], repeats: int, warmup: int = 0) -> Stats:
    """Wall-clock seconds of ``function()`` over ``repeats`` runs after ``warmup`` unmeasured runs."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return stats(seconds)


def interleaved(functions: dict[str, Callable[[], Any]], repeats: int, warmup: int = 0) -> dict[str, Stats]:
    """Time several contenders in turn (A, B, C, A, B, C, ...), so background noise hits them alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - started)
    return {name: stats(values) for name, values in seconds.items()}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far.

    From /proc/self/status (VmHWM): getrusage's ru_maxrss survives exec on Linux, so a child started from a big
    parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run a measuring subprocess that prints one JSON object as its last stdout line; return that object.

    A fresh process per measurement gives an honest peak RSS and no warm caches from the previous contender."""
    completed = subprocess.run(
        list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare these numbers with their own."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


@dataclass
class Section:
    """One benchmark's contribution to BENCHMARKS.md: a markdown body plus the raw numbers."""

    name: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(section: Section, *, quick: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{section.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"quick": quick, "machine": machine(), **section.data}, indent=2, default=str))
    tmp.replace(path)
    return path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def update_benchmarks_md(
    section: Section, *, quick: bool, path: Path = BENCHMARKS_MD, facts: dict[str, Any] | None = None
) -> None:
    """Replace the text between this section's markers in BENCHMARKS.md (written atomically). ``facts``: the
    machine facts of when it was measured (default: now)."""
    start, end = _markers(section.name)
    source = path if path.exists() else REPO_ROOT / "BENCHMARKS.md"
    text = source.read_text() if source.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    facts = facts or machine()
    stamp = (
        f"_Measured {facts['date']} at commit `{facts['commit']}` "
        f"({'quick' if quick else 'full'} mode; load average at start {facts['load_average_at_start']})._"
    )
    block = f"{start}\n{stamp}\n\n{section.markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + f"\n\n{block}\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
