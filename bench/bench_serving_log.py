"""Serving with the prediction log on vs off: the same model, three of our servers side by side in one run.

``off`` logs nothing; ``sqlite`` logs every request to a SQLite file; ``postgresql`` to a fresh database of the
PostgreSQL server on 127.0.0.1 (ML_TEST_POSTGRES_HOST/PORT), if one is reachable (else that column is left out and
the text says so). The model is bench_serving's: the default churn data through the ETL and ``train()``, served
through the numpy fast path, where per-request overhead shows most.

Measured, rounds interleaved across the servers so noise hits them alike: sequential single-row p50/p99 on one
keep-alive connection; and 16 keep-alive connections for a few seconds (throughput, p50/p99 under load). After the
servers stop (their shutdown flushes the log), the rows in each database are counted against the requests answered
and the written/dropped counters.

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
from common import Section, jsonable, markdown_table, ratio, stats
from serving_load import CONNECTIONS, generate_load, percentile, sequential_latencies

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
        yield urls
        return
    from tests import services

    with services.postgres_server() as pg, services.databases(pg, "bench_predlog") as (database,):
        urls["postgresql"] = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{database}"
        yield urls


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
    # A p99 of 500 requests is their 5th slowest: two runs of the same code moved it by +-20 %. The full run takes
    # 2,500 per round (the 25th slowest) and 8 rounds, whose median is reported.
    rounds, per_round = (4, 500) if plan is QUICK else (8, 2_500)
    results: dict[str, Any] = {"servers": {}, "rounds": rounds, "per_round": per_round}
    with log_databases(root) as urls:
        with logging_servers(store, urls) as servers:
            samples, loads, cpu, counters = _measure_servers(servers, store, plan, rounds, per_round)
        # The servers are stopped (their shutdown flushed the queues); the databases are still there.
        for name, url in urls.items():
            server_name = f"log_{name}"
            results["servers"][name] = {
                "p50": stats([percentile(values, 50) for values in samples[server_name]]),
                "p99": stats([percentile(values, 99) for values in samples[server_name]]),
                "cpu_per_request": stats(cpu[server_name]),
                "rps": stats([r.requests_per_second for r in loads[server_name]]),
                "failed": sum(r.failed for r in loads[server_name]),
                "p50_under_load": stats([r.percentile_ms(50) / 1000 for r in loads[server_name]]),
                "p99_under_load": stats([r.percentile_ms(99) / 1000 for r in loads[server_name]]),
                "counters_before_stop": counters[server_name],
                "logged_requests": None if url is None else _logged_requests(url),
            }
    results["postgresql_reachable"] = "postgresql" in urls
    return results


def _measure_servers(
    servers: list[Server], store: Store, plan: Plan, rounds: int, per_round: int
) -> tuple[dict[str, list[list[float]]], dict[str, list[Any]], dict[str, list[float]], dict[str, dict[str, float]]]:
    """(single-row latencies per round, load results, server CPU seconds per request per round, log counters) per
    server; rounds interleaved."""
    bodies = [servers[0].encode([row]) for row in store.rows[:ONE_ROW_BODIES]]
    for server in servers:
        sequential_latencies(server.host, server.port, "/predict", bodies, plan.warmup_requests)
    samples: dict[str, list[list[float]]] = {s.name: [] for s in servers}
    cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    for _ in range(rounds):
        for server in servers:
            before = _cpu_seconds(server.process.pid)
            samples[server.name].append(sequential_latencies(server.host, server.port, "/predict", bodies, per_round))
            cpu[server.name].append((_cpu_seconds(server.process.pid) - before) / per_round)
    loads: dict[str, list[Any]] = {s.name: [] for s in servers}
    for _ in range(plan.load_rounds):
        for server in servers:
            result, _ = generate_load(server.host, server.port, "/predict", bodies, plan.load_seconds)
            loads[server.name].append(result)
    return samples, loads, cpu, {s.name: _counters(s) for s in servers}


def render(results: dict[str, Any], plan: Plan) -> str:
    servers = results["servers"]
    off = servers["off"]
    header = ["", *(f"log {name}" if name != "off" else "log off" for name in servers)]

    def row(label: str, cell: Any) -> list[str]:
        return [label, *(cell(name, values) for name, values in servers.items())]

    def versus(key: str) -> Any:
        def cell(name: str, values: dict[str, Any]) -> str:
            text = f"{values[key].median * 1000:.2f} ms"
            return text if name == "off" else f"{text} ({ratio(values[key], off[key]) - 1:+.0%})"

        return cell

    rows = [
        row(f"single row p50 ({results['rounds']} rounds of {results['per_round']:,})", versus("p50")),
        row("single row p99 (median of the rounds')", versus("p99")),
        row("server CPU per single-row request (with its log writer)", versus("cpu_per_request")),
        row(
            f"throughput, {CONNECTIONS} connections, {plan.load_seconds:.0f} s x {plan.load_rounds}",
            lambda name, v: (
                f"{v['rps'].median:,.0f} req/s"
                + ("" if name == "off" else f" ({ratio(v['rps'], off['rps']) - 1:+.0%})")
            ),
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
                if name == "off"
                else f"{v['logged_requests']:,} / {v['counters_before_stop'].get('written_total', 0):,.0f} / "
                f"{v['counters_before_stop'].get('dropped_total', 0):,.0f}"
            ),
        ),
    ]
    verdicts = []
    for name, values in servers.items():
        if name == "off":
            continue
        p50, p99 = ratio(values["p50"], off["p50"]) - 1, ratio(values["p99"], off["p99"]) - 1
        met = p50 <= TARGET_OVERHEAD and p99 <= TARGET_OVERHEAD
        verdicts.append(f"{name}: p50 {p50:+.0%}, p99 {p99:+.0%} ({'**met**' if met else '**not met**'})")
    missing = "" if results["postgresql_reachable"] else " No PostgreSQL was reachable: that column is missing."
    return (
        "**Prediction log on vs off** (`python bench/bench_serving_log.py`): three of our servers with the same "
        "churn model (numpy fast path), side by side: no log, a SQLite file, a fresh PostgreSQL database; rounds "
        f"interleaved between them.{missing} Written/dropped are the servers' counters just before they stopped; "
        "the log also has what the shutdown flushed. The server's CPU time per request (from /proc, its log "
        "writer process included; PostgreSQL's own work is not in it) does not count time spent waiting for a "
        "core, so it is the steadier measure of what logging costs on a busy machine.\n\n"
        + markdown_table(header, rows)
        + f"\n\nTarget, p50 and p99 within {TARGET_OVERHEAD:.0%} of logging off: "
        + "; ".join(verdicts)
        + "."
    )


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
