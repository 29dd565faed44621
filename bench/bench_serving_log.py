"""Serving with the prediction log on vs off: the same model, three of our servers side by side in one run.

``off`` logs nothing; ``sqlite`` logs every request to a SQLite file; ``postgresql`` to a fresh database of the
PostgreSQL server on 127.0.0.1 (ML_TEST_POSTGRES_HOST/PORT), if one is reachable (else that column is left out and
the text says so). The model is bench_serving's: the default churn data through the ETL and ``train()``, served
through the numpy fast path, where per-request overhead shows most.

``off_again`` is a second server without a log: what it differs from ``off`` by is the measurement's noise.

Measured: single-row p50/p99 of sequential requests taken in turns across the servers, one request in flight at a
time (a, b, c, d, b, c, d, a, ...), so that whatever else the shared machine does falls on every server alike; in
rounds of a few thousand requests per server instead, two identical log-off servers differed by up to 29 % at p99
on the 2-core machine. Then 16 keep-alive connections for a few seconds per server, rounds interleaved (throughput,
p50/p99 under load). After the servers stop (their shutdown flushes the log), the rows in each database are counted
against the requests answered and the written/dropped counters.

    python bench/bench_serving_log.py --quick   # writes its section of BENCHMARKS.md (serving_log)
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.services: a PostgreSQL database

from bench_serving import FULL, ONE_ROW_BODIES, QUICK, Plan, Server, Store, _wait_healthy, build_store, start_ours
from common import Section, Stats, jsonable, markdown_table, stats
from serving_load import CONNECTIONS, generate_load, percentile, round_robin_latencies, sequential_latencies

TARGET_OVERHEAD = 0.10  # logging on: p50 and p99 within 10 % of logging off
_COUNTER = re.compile(rb"^(mlpipeline_serving_prediction_log_(?:written|dropped)_total) (\S+)$", re.MULTILINE)


def _postgres_reachable() -> tuple[str, int] | None:
    host = os.environ.get("ML_TEST_POSTGRES_HOST", "127.0.0.1")
    port = int(os.environ.get("ML_TEST_POSTGRES_PORT", 5432))
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return host, port
    return None


@contextlib.contextmanager
def log_databases(root: Path) -> Iterator[dict[str, str | None]]:
    """{server name: prediction log URL}: none, a SQLite file, and a fresh PostgreSQL database if reachable."""
    urls: dict[str, str | None] = {"off": None, "sqlite": f"sqlite:///{root / 'prediction_log.db'}"}
    if _postgres_reachable() is None:
        yield {**urls, "off_again": None}
        return
    from tests import services

    with services.postgres_server() as pg, services.databases(pg, "bench_predlog") as (database,):
        urls["postgresql"] = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{database}"
        yield {**urls, "off_again": None}


@contextlib.contextmanager
def logging_servers(store: Store, urls: dict[str, str | None]) -> Iterator[list[Server]]:
    servers = []
    try:
        for name, url in urls.items():
            env = {"MLPIPELINE_PREDICTION_LOG_URL": url} if url else {"MLPIPELINE_PREDICTION_LOG_URL": ""}
            servers.append(start_ours(store, f"log_{name}", env))
        for server in servers:
            _wait_healthy(server, "/health", 180)
        yield servers
    finally:
        for server in servers:
            server.stop()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process so far, all its threads and its live child processes (the prediction
    log's writer process included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    child_pids = [int(child) for child in children.read_text().split()] if children.exists() else []
    return own + sum(_cpu_seconds(child) for child in child_pids if Path(f"/proc/{child}").exists())


def _counters(server: Server) -> dict[str, float]:
    _, text = server.get("/metrics")
    return {match.group(1).decode().split("_log_")[1]: float(match.group(2)) for match in _COUNTER.finditer(text)}


def _logged_requests(url: str) -> int:
    from sqlalchemy import func, select

    from mlpipeline.prediction_store import engine_for, prediction_requests

    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(prediction_requests)).scalar_one())
    finally:
        engine.dispose()


def measure(store: Store, plan: Plan, root: Path) -> dict[str, Any]:
    # Pooled percentiles of requests taken in turns; the quarters (consecutive) show how much they moved in the run.
    per_server = 3_000 if plan is QUICK else 20_000
    results: dict[str, Any] = {"servers": {}, "per_server": per_server}
    with log_databases(root) as urls:
        with logging_servers(store, urls) as servers:
            samples, loads, cpu, counters = _measure_servers(servers, store, plan, per_server)
        # The servers are stopped (their shutdown flushed the queues); the databases are still there.
        for name, url in urls.items():
            latencies = samples[f"log_{name}"]
            size = len(latencies) // 4
            quarters = [latencies[start * size : (start + 1) * size] for start in range(4)]
            server_loads = loads[f"log_{name}"]
            results["servers"][name] = {
                "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99),
                "p50_quarters": stats([percentile(values, 50) for values in quarters]),
                "p99_quarters": stats([percentile(values, 99) for values in quarters]),
                "cpu_per_request": cpu[f"log_{name}"],
                "rps": stats([r.requests_per_second for r in server_loads]),
                "failed": sum(r.failed for r in server_loads),
                "p50_under_load": stats([r.percentile_ms(50) / 1000 for r in server_loads]),
                "p99_under_load": stats([r.percentile_ms(99) / 1000 for r in server_loads]),
                "counters_before_stop": counters[f"log_{name}"],
                "logged_requests": None if url is None else _logged_requests(url),
            }
    results["postgresql_reachable"] = "postgresql" in urls
    return results


def _measure_servers(
    servers: list[Server], store: Store, plan: Plan, per_server: int
) -> tuple[dict[str, list[float]], dict[str, list[Any]], dict[str, float], dict[str, dict[str, float]]]:
    """(single-row latencies, load results, server CPU seconds per single-row request, log counters) per server."""
    bodies = [servers[0].encode([row]) for row in store.rows[:ONE_ROW_BODIES]]
    for server in servers:
        sequential_latencies(server.host, server.port, "/predict", bodies, plan.warmup_requests)
    before = {s.name: _cpu_seconds(s.process.pid) for s in servers}
    latencies = round_robin_latencies([(s.host, s.port) for s in servers], "/predict", bodies, per_server)
    cpu = {s.name: (_cpu_seconds(s.process.pid) - before[s.name]) / per_server for s in servers}
    samples = {s.name: values for s, values in zip(servers, latencies, strict=True)}
    loads: dict[str, list[Any]] = {s.name: [] for s in servers}
    for _ in range(plan.load_rounds):
        for server in servers:
            result, _ = generate_load(server.host, server.port, "/predict", bodies, plan.load_seconds)
            loads[server.name].append(result)
    return samples, loads, cpu, {s.name: _counters(s) for s in servers}


def _label(name: str) -> str:
    return {"off": "log off", "off_again": "log off, 2nd server"}.get(name, f"log {name}")


def render(results: dict[str, Any], plan: Plan) -> str:
    servers = results["servers"]
    off = servers["off"]
    header = ["", *(_label(name) for name in servers)]

    def row(label: str, cell: Any) -> list[str]:
        return [label, *(cell(name, values) for name, values in servers.items())]

    def versus(key: str) -> Any:
        def cell(name: str, values: dict[str, Any]) -> str:
            quarters = values[f"{key}_quarters"]
            text = f"{values[key] * 1000:.2f} ms ({quarters.low * 1000:.2f}-{quarters.high * 1000:.2f})"
            return text if name == "off" else f"{text} **{values[key] / off[key] - 1:+.1%}**"

        return cell

    def more_or_less(key: str, unit: str, scale: float, digits: int) -> Any:
        def cell(name: str, values: dict[str, Any]) -> str:
            value, base = values[key], off[key]
            value, base = (value.median, base.median) if isinstance(value, Stats) else (value, base)
            text = f"{value * scale:,.{digits}f} {unit}"
            return text if name == "off" else f"{text} ({value / base - 1:+.0%})"

        return cell

    per_server = f"{results['per_server']:,}"
    rows = [
        row(f"single row p50 ({per_server} requests per server, in turns; range over quarters)", versus("p50")),
        row("single row p99 (the same requests)", versus("p99")),
        row("server CPU per single-row request (with its log writer)", more_or_less("cpu_per_request", "ms", 1000, 2)),
        row(
            f"throughput, {CONNECTIONS} connections, {plan.load_seconds:.0f} s x {plan.load_rounds}",
            more_or_less("rps", "req/s", 1, 0),
        ),
        row(
            "p50 / p99 under that load",
            lambda _, v: f"{v['p50_under_load'].median * 1000:.1f} / {v['p99_under_load'].median * 1000:.1f} ms",
        ),
        row("failed requests", lambda _, v: str(v["failed"])),
        row(
            "requests in the log / written / dropped",
            lambda name, v: (
                "—"
                if v["logged_requests"] is None
                else f"{v['logged_requests']:,} / {v['counters_before_stop'].get('written_total', 0):,.0f} / "
                f"{v['counters_before_stop'].get('dropped_total', 0):,.0f}"
            ),
        ),
    ]
    return (
        "**Prediction log on vs off** (`python bench/bench_serving_log.py`): four of our servers with the same "
        "churn model (numpy fast path), side by side: no log, a SQLite file, a fresh PostgreSQL database, and a "
        "second server without a log, whose difference from the first is the measurement's noise. Single-row "
        "requests go to the servers in turns, one in flight at a time; the load rounds are interleaved."
        f"{'' if results['postgresql_reachable'] else ' No PostgreSQL was reachable: that column is missing.'} "
        "Written/dropped are the servers' counters just before they stopped; the log also has what the shutdown "
        "flushed. The server's CPU time per request (from /proc, its log writer process included; PostgreSQL's "
        "own work is not in it) does not count time spent waiting for a core.\n\n"
        + markdown_table(header, rows)
        + "\n\n"
        + _verdict(servers)
    )


def _verdict(servers: dict[str, dict[str, Any]]) -> str:
    off = servers["off"]
    parts, noise = [], ""
    for name, values in servers.items():
        if name == "off":
            continue
        p50, p99 = values["p50"] / off["p50"] - 1, values["p99"] / off["p99"] - 1
        if name == "off_again":
            noise = f"Noise (the 2nd log-off server against the 1st): p50 {p50:+.1%}, p99 {p99:+.1%}."
            continue
        met = p50 <= TARGET_OVERHEAD and p99 <= TARGET_OVERHEAD
        parts.append(f"{name}: p50 {p50:+.1%}, p99 {p99:+.1%} ({'**met**' if met else '**not met**'})")
    return f"Target, p50 and p99 within {TARGET_OVERHEAD:.0%} of logging off: {'; '.join(parts)}. {noise}"


def run(quick: bool, store: Store | None = None) -> Section:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-serving-log-") as tmp:
        root = Path(tmp)
        store = store or build_store(root / "store")
        results = measure(store, plan, root)
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return Section(name="serving_log", markdown=render(results, plan), data=jsonable(results))


def main(argv: Sequence[str]) -> int:
    from common import update_benchmarks_md, write_result

    quick = "--quick" in argv
    section = run(quick)
    write_result(section, quick=quick)
    update_benchmarks_md(section, quick=quick)
    print(section.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
