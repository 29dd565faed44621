"""The load generator of the serving benchmarks: sequential requests on one keep-alive connection, and
``CONNECTIONS`` keep-alive connections spread over ``LOAD_PROCESSES`` spawned processes (so the client is not held
back by one GIL). Imported by those child processes: keep its imports light (standard library only).
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CONNECTIONS = 16
LOAD_PROCESSES = 4  # 16 connections = 4 processes x 4 threads: the client is not held back by one GIL
HEADERS = {"Content-Type": "application/json"}
_VERSION_IN_BODY = re.compile(rb'"model_version":"([^"]*)"')


def connect(host: str, port: int) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    connection.connect()
    # Without it, Nagle + delayed ACK can add ~40 ms to a request whose headers and body go out separately.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", path, body, HEADERS)
    response = connection.getresponse()
    return response.status, response.read()


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def merge(self, other: _Tally) -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.latencies.extend(other.latencies)
        self.versions.update(other.versions)
        self.errors.extend(other.errors[: max(0, 5 - len(self.errors))])


def _hammer(
    host: str, port: int, path: str, bodies: Sequence[bytes], offset: int, start_at: float, stop_at: float
) -> _Tally:
    """One keep-alive connection sending requests back to back until ``stop_at`` (time.monotonic)."""
    tally = _Tally()
    connection = connect(host, port)
    index = offset
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while (started := time.monotonic()) < stop_at:
        body = bodies[index % len(bodies)]
        index += 1
        try:
            status, data = _post(connection, path, body)
        except (OSError, http.client.HTTPException) as exc:
            tally.failed += 1
            if len(tally.errors) < 5:
                tally.errors.append(f"{type(exc).__name__}: {exc}")
            connection.close()
            connection = connect(host, port)
            continue
        finished = time.monotonic()
        if finished > stop_at:
            break  # completed outside the window: neither counted nor timed
        tally.latencies.append(finished - started)
        if status == 200:
            tally.ok += 1
            if (match := _VERSION_IN_BODY.search(data, 0, 200)) is not None:
                tally.versions[match.group(1).decode()] += 1
        else:
            tally.failed += 1
            if len(tally.errors) < 5:
                tally.errors.append(f"HTTP {status}: {data[:200]!r}")
    connection.close()
    return tally


def _load_process(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    connections: int,
    first_offset: int,
    seconds: float,
    ready: Any,
    go: Any,
    start_value: Any,
    results: Any,
) -> None:
    """Entry point of one load-generator process: ``connections`` threads, each with its own keep-alive socket."""
    tallies: list[_Tally] = []
    failures: list[str] = []
    ready.put(os.getpid())
    go.wait()
    start_at = start_value.value
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)

    def worker(offset: int) -> None:
        try:
            tallies.append(_hammer(host, port, path, bodies, offset, start_at, start_at + seconds))
        except Exception as exc:  # reported to the parent, which fails the benchmark loudly
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(first_offset + i * 7,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    total = _Tally()
    for tally in tallies:
        total.merge(tally)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    results.put(
        {
            "ok": total.ok,
            "failed": total.failed + len(failures),
            "latencies": total.latencies,
            "versions": dict(total.versions),
            "errors": (failures + total.errors)[:5],
            "cpu_seconds": cpu,
        }
    )


@dataclass(frozen=True)
class LoadResult:
    ok: int
    failed: int
    seconds: float
    latencies: tuple[float, ...]
    versions: dict[str, int]
    errors: tuple[str, ...]
    client_cpu_seconds: float

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "seconds": self.seconds,
            "requests_per_second": self.requests_per_second,
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
            "max_ms": max(self.latencies, default=0.0) * 1000,
            "versions": self.versions,
            "errors": list(self.errors),
            "client_cpu_share": self.client_cpu_seconds / self.seconds,
        }


def generate_load(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    seconds: float,
    *,
    during: Callable[[float], Any] | None = None,
) -> tuple[LoadResult, Any]:
    """``CONNECTIONS`` keep-alive connections over ``LOAD_PROCESSES`` processes for ``seconds``.

    ``during(start_at)`` runs in this process while the load is on (the champion swap); its result is returned."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process holding MLflow/sklearn threads
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    start_value = context.Value("d", 0.0)
    per_process = CONNECTIONS // LOAD_PROCESSES
    processes = [
        context.Process(
            target=_load_process,
            args=(host, port, path, bodies, per_process, i, seconds, ready, go, start_value, results),
            daemon=True,
        )
        for i in range(LOAD_PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        _wait_ready(ready, processes, timeout=120)
        start_at = time.monotonic() + 0.5  # time for every thread to connect before the window opens
        start_value.value = start_at
        go.set()
        during_result = during(start_at) if during is not None else None
        parts = [results.get(timeout=seconds + 120) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    return (
        LoadResult(
            ok=sum(p["ok"] for p in parts),
            failed=sum(p["failed"] for p in parts),
            seconds=seconds,
            latencies=tuple(latency for p in parts for latency in p["latencies"]),
            versions=dict(sum((Counter(p["versions"]) for p in parts), Counter())),
            errors=tuple(error for p in parts for error in p["errors"])[:5],
            client_cpu_seconds=sum(p["cpu_seconds"] for p in parts),
        ),
        during_result,
    )


def _wait_ready(ready: Any, processes: Sequence[Any], timeout: float) -> None:
    """Every load process has started; fail fast (not after the timeout) if one of them died."""
    deadline = time.monotonic() + timeout
    waiting = len(processes)
    while waiting:
        try:
            ready.get(timeout=0.5)
            waiting -= 1
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"load generator did not start (exit codes {dead})") from None


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def round_robin_latencies(
    servers: Sequence[tuple[str, int]], path: str, bodies: Sequence[bytes], count: int
) -> list[list[float]]:
    """Seconds per request for each (host, port), ``count`` requests each on one keep-alive connection per server,
    taken in turns (a, b, c, b, c, a, ...: the first server rotates): one request in flight at a time, and whatever
    else the machine does falls on every server alike."""
    connections = [connect(host, port) for host, port in servers]
    latencies: list[list[float]] = [[] for _ in servers]
    try:
        for index in range(count):
            body = bodies[index % len(bodies)]
            first = index % len(servers)
            for position in [*range(first, len(servers)), *range(first)]:
                started = time.perf_counter()
                status, data = _post(connections[position], path, body)
                latencies[position].append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"{path} answered HTTP {status}: {data[:300]!r}")
    finally:
        for connection in connections:
            connection.close()
    return latencies


def sequential_latencies(host: str, port: int, path: str, bodies: Sequence[bytes], count: int) -> list[float]:
    """Seconds per request, ``count`` requests one after another on one fresh keep-alive connection."""
    return round_robin_latencies([(host, port)], path, bodies, count)[0]
