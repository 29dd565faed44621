"""The production stack as local processes, read from ``docker-compose.yaml`` (its single source of truth).

Each compose service's entrypoint + command and environment are interpolated the way compose does
(``${VAR:-default}``), with hosts set to 127.0.0.1, free ports and a given PostgreSQL and Redis, and run as a
local process. What differs locally is listed in :data:`LOCAL_ONLY_FLAGS` and nowhere else; the services compose
runs that have no local binary, with what stands in for them, in
:data:`mlpipeline.dev.compose.COMPOSE_ONLY_SERVICES`.

    python -m mlpipeline.dev.stack up      # foreground; Ctrl-C stops everything (``make stack``)

Nothing here imports Airflow.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg2
from psycopg2 import sql

from mlpipeline.dev.compose import (
    COMPOSE_FILE,
    COMPOSE_ONLY_SERVICES,
    EXTERNAL_SERVICES,
    PROMETHEUS_CONFIG,
    ServiceSpec,
    interpolate,
    load_compose,
    render_prometheus_config,
    resolve_services,
    stand_in_services,
)
from mlpipeline.dev.localstack import REPO_ROOT, ManagedProcess, StackError, free_port, new_fernet_key, stored_secrets
from mlpipeline.dev.supervisor import RESTARTING_POLICIES, RestartPolicy, Supervisor
from mlpipeline.storage import atomic_write_text

__all__ = [
    "COMPOSE_FILE",
    "COMPOSE_ONLY_SERVICES",
    "EXTERNAL_SERVICES",
    "INIT_SERVICE",
    "LOCAL_ONLY_FLAGS",
    "SERVICE_PORTS",
    "START_ORDER",
    "Postgres",
    "ProcessStack",
    "Redis",
    "ServiceSpec",
    "interpolate",
    "load_compose",
    "local_argv",
    "main",
    "resolve_services",
    "stack_from_environment",
]

INIT_SERVICE = "airflow-init"
# Services built from another image run from another virtualenv (deploy/mlflow.Dockerfile <-> .venv-mlflow).
SERVICE_VIRTUALENVS: dict[str, Path] = {"mlflow": REPO_ROOT / ".venv-mlflow"}
# Locally several components share one host: their log servers would all bind every interface on :8793 (Airflow
# binds them to all interfaces whatever the settings); the shared local log folder makes them unnecessary.
LOCAL_ONLY_FLAGS: dict[str, list[str]] = {
    "airflow-scheduler": ["--skip-serve-logs"],
    "airflow-triggerer": ["--skip-serve-logs"],
    "airflow-worker": ["--skip-serve-logs"],
    "airflow-worker-training": ["--skip-serve-logs"],
}
# Programs the process stack runs from the machine (not from a virtualenv), and how to get them.
LOCAL_BINARIES = {"prometheus": "apt-get install -y prometheus"}
# Start order of what runs locally (compose services; "mailpit" runs its stand-in); compose expresses the same with
# depends_on + health checks.
START_ORDER = (
    "mlflow",
    "mailpit",
    "datasource",
    "model-server",
    "prometheus",
    "airflow-apiserver",
    "airflow-dag-processor",
    "airflow-scheduler",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-training",
    "flower",
)

# Every port a service listens on, with docker-compose.yaml's default: the process stack picks free ones instead,
# ``python -m mlpipeline.dev.stack up`` reads them from the environment like compose does.
SERVICE_PORTS: dict[str, int] = {
    "AIRFLOW_API_PORT": 8080,
    "FLOWER_PORT": 5555,
    "MLFLOW_PORT": 5000,
    "MODEL_SERVER_PORT": 8000,
    "DATASOURCE_PORT": 8765,
    "SMTP_PORT": 1025,
    "SCHEDULER_HEALTH_PORT": 8974,
    "PROMETHEUS_PORT": 9090,
    "GRAFANA_PORT": 3000,
    "MAILPIT_UI_PORT": 8025,
}


def local_argv(spec: ServiceSpec) -> list[str]:
    """The compose command as a local process: tools from this virtualenv, plus the documented local flags."""
    venv = SERVICE_VIRTUALENVS.get(spec.name)
    bin_dir = venv / "bin" if venv else Path(sys.executable).parent
    if venv and not bin_dir.exists():
        raise StackError(
            f"{spec.name} runs from {venv}, which is missing: run `make stack` or `make test` to create it"
        )
    program, *args = spec.argv
    if program == "python":
        program = str(bin_dir / "python") if venv else sys.executable
    elif (bin_dir / program).exists():
        program = str(bin_dir / program)
    elif shutil.which(program):
        program = str(shutil.which(program))
    elif program in LOCAL_BINARIES:
        raise StackError(f"{spec.name} needs {program}, which is not installed: {LOCAL_BINARIES[program]}")
    return [program, *args, *LOCAL_ONLY_FLAGS.get(spec.name, [])]


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    airflow_db: str
    mlflow_db: str
    # The model server's prediction log; "" means "<airflow_db>_prediction_log" (unique per stack, like the others).
    prediction_log_db: str = ""

    @property
    def prediction_log_database(self) -> str:
        return self.prediction_log_db or f"{self.airflow_db}_prediction_log"


@dataclass(frozen=True)
class Redis:
    host: str
    port: int
    db: int
    password: str  # compose requires one (REDIS_PASSWORD); so does the process stack


# The MLflow service account's login, checked the way compose's health check of the mlflow service does.
MLFLOW_CURRENT_USER_PATH = "/api/2.0/mlflow/users/current"


@dataclass
class ProcessStack:
    """``docker compose up`` without Docker: the same services as processes under ``root``."""

    root: Path
    postgres: Postgres
    redis: Redis
    ports: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    supervisor: Supervisor | None = None

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for name in SERVICE_PORTS:
            self.ports.setdefault(name, free_port())

    def _secrets(self) -> dict[str, str]:
        return stored_secrets(
            self.root / "secrets.json",
            lambda: {
                "AIRFLOW_FERNET_KEY": new_fernet_key(),
                "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW_ADMIN_USERNAME": "admin",
                "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(12),
                "FLOWER_USER": "flower",
                "FLOWER_PASSWORD": secrets.token_urlsafe(12),
                "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
                "MLFLOW_ADMIN_USERNAME": "admin",
                "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(16),
                "MLFLOW_FLASK_SECRET_KEY": secrets.token_urlsafe(32),
                "MLFLOW_SERVICE_USERNAME": "ml-pipeline",
                "MLFLOW_SERVICE_PASSWORD": secrets.token_urlsafe(16),
                "MLPIPELINE_SERVING_TOKEN": secrets.token_urlsafe(32),
                "MLPIPELINE_MODEL_SIGNING_KEY": secrets.token_hex(32),
                # Compose requires them; nothing local uses them (Grafana and Mailpit are compose-only, and the
                # process stack's prediction log uses the given PostgreSQL user).
                "PREDICTION_LOG_READER_PASSWORD": secrets.token_urlsafe(16),
                "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
                "MAILPIT_UI_PASSWORD": secrets.token_urlsafe(16),
            },
        )

    @property
    def mlflow_auth(self) -> tuple[str, str]:
        """The MLflow service account (what the workers and the model server log in with)."""
        secret = self._secrets()
        return secret["MLFLOW_SERVICE_USERNAME"], secret["MLFLOW_SERVICE_PASSWORD"]

    def variables(self) -> dict[str, str]:
        """What compose would read from ``.env``: here, local hosts, ports and directories."""
        local = "127.0.0.1"
        values = {
            **self._secrets(),
            "BIND_HOST": local,
            "POSTGRES_HOST": self.postgres.host,
            "POSTGRES_PORT": str(self.postgres.port),
            "POSTGRES_USER": self.postgres.user,
            "POSTGRES_PASSWORD": self.postgres.password,
            "AIRFLOW_DB_NAME": self.postgres.airflow_db,
            "MLFLOW_DB_NAME": self.postgres.mlflow_db,
            # The prediction log: the given PostgreSQL user (compose creates a role of its own).
            "PREDICTION_LOG_DB_NAME": self.postgres.prediction_log_database,
            "PREDICTION_LOG_DB_USER": self.postgres.user,
            "PREDICTION_LOG_DB_PASSWORD": self.postgres.password,
            "REDIS_HOST": self.redis.host,
            "REDIS_PORT": str(self.redis.port),
            "REDIS_DB": str(self.redis.db),
            "REDIS_PASSWORD": self.redis.password,
            "AIRFLOW_API_HOST": local,
            "MLFLOW_HOST": local,
            "MODEL_SERVER_HOST": local,
            "PROMETHEUS_HOST": local,
            "CRAWL_URL": f"http://{local}:{self.ports['DATASOURCE_PORT']}/api/records",
            "SMTP_CONNECTION": (
                f"smtp://{local}:{self.ports['SMTP_PORT']}?disable_ssl=true&disable_tls=true&timeout=10&retry_limit=3"
            ),
            "AIRFLOW_PUBLIC_URL": f"http://{local}:{self.ports['AIRFLOW_API_PORT']}",
            "MLFLOW_PUBLIC_URL": f"http://{local}:{self.ports['MLFLOW_PORT']}",
            "PROMETHEUS_CONFIG": str(self.root / "prometheus" / "prometheus.yml"),
            "PROMETHEUS_DATA_DIR": str(self.root / "prometheus" / "data"),
            "AIRFLOW_HOME_DIR": str(self.root / "airflow"),
            "AIRFLOW_DAGS_DIR": str(REPO_ROOT / "dags"),
            "AIRFLOW_LOGS_DIR": str(self.root / "logs" / "airflow"),
            "ML_DATA_DIR": str(self.root / "data"),
            "MLFLOW_ARTIFACTS_DIR": str(self.root / "mlflow-artifacts"),
            "MLFLOW_AUTH_DIR": str(self.root / "mlflow-auth"),
            "MLFLOW_ALLOWED_HOSTS": f"{local},{local}:{self.ports['MLFLOW_PORT']}",
            "MAIL_DIR": str(self.root / "mail"),
            "ML_PIPELINE_HOME": str(REPO_ROOT),
            "ML_PIPELINE_SCHEDULE": "none",
            **{name: str(port) for name, port in self.ports.items()},
        }
        values.update(self.overrides)
        return values

    def services(self) -> dict[str, ServiceSpec]:
        """What runs locally: the compose services with their own commands, and the compose-only ones' stand-ins."""
        variables = self.variables()
        return {**resolve_services(load_compose(), variables), **stand_in_services(variables)}

    def _process_env(self, spec: ServiceSpec) -> dict[str, str]:
        # Only what compose gives a service: nothing of this kind leaks in from the caller's environment.
        prefixes = ("AIRFLOW", "MLFLOW", "ML_PIPELINE", "MLPIPELINE", "REDIS", "PG")  # PG*: libpq (prediction log)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        bin_dir = str(Path(sys.executable).parent)
        return {**inherited, "PATH": f"{bin_dir}{os.pathsep}{inherited.get('PATH', '')}", **spec.environment}

    def _logs(self) -> Path:
        return self.root / "logs"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AIRFLOW_API_PORT']}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['FLOWER_PORT']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW_PORT']}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MODEL_SERVER_PORT']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}"

    @property
    def prediction_log_url(self) -> str:
        """The model server's prediction log, as the model server and the monitoring tasks get it (compose's URL,
        whose password, if any, libpq reads from PGPASSWORD)."""
        return self.services()["model-server"].environment["MLPIPELINE_PREDICTION_LOG_URL"]

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    def create_prediction_log_database(self) -> None:
        """deploy/postgres-init.sh's part for the process stack: the prediction log's database, if missing."""
        pg = self.postgres
        name = pg.prediction_log_database
        connection = psycopg2.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=pg.airflow_db, connect_timeout=10
        )
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()

    def render_prometheus_config(self) -> Path:
        """deploy/prometheus/prometheus.yml with the local targets, where PROMETHEUS_CONFIG says."""
        path = Path(self.variables()["PROMETHEUS_CONFIG"])
        path.parent.mkdir(parents=True, exist_ok=True)
        rendered = render_prometheus_config(
            PROMETHEUS_CONFIG.read_text(encoding="utf-8"), self.ports, SERVICE_PORTS, "127.0.0.1"
        )
        atomic_write_text(path, rendered)
        return path

    def init(self, specs: dict[str, ServiceSpec]) -> None:
        self.create_prediction_log_database()
        self.render_prometheus_config()
        spec = specs[INIT_SERVICE]
        init = ManagedProcess(INIT_SERVICE, local_argv(spec), self._process_env(spec), self._logs() / "init.log")
        init.start()
        assert init.popen is not None
        if init.popen.wait(timeout=600) != 0:
            raise StackError(f"{INIT_SERVICE} failed; log {init.log_path}:\n{init.log_tail()}")
        init.stop()

    def up(self, names: tuple[str, ...] = START_ORDER, timeout: float = 180) -> None:
        specs = self.services()
        unknown = set(specs) - set(START_ORDER) - {INIT_SERVICE}
        unknown |= set(load_compose()["services"]) - set(specs) - set(EXTERNAL_SERVICES) - set(COMPOSE_ONLY_SERVICES)
        if unknown:
            raise StackError(f"docker-compose.yaml has service(s) the process stack does not know: {sorted(unknown)}")
        for directory in ("data", "mail", "mlflow-artifacts", "logs/airflow"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        self.init(specs)
        # Start in compose's dependency order, and wait for health checks only where a later service needs them
        # (the model server needs MLflow); the Airflow components come up in parallel, which halves start-up.
        started: list[tuple[ManagedProcess, str | None]] = []
        for name in names:
            spec = specs[name]
            process = ManagedProcess(name, local_argv(spec), self._process_env(spec), self._logs() / f"{name}.log")
            self.processes[name] = process.start()
            started.append((process, spec.health_url))
            if name == "mlflow":
                process.wait_until(self._mlflow_ready, timeout, "service account login")
        for process, url in started:
            if url:
                process.wait_until(lambda url=url: self._healthy(url), timeout, "health check")
        restartable = frozenset(name for name in names if specs[name].restart in RESTARTING_POLICIES)
        self.supervisor = Supervisor(self.processes, restartable, self.restart_policy).start()

    @contextlib.contextmanager
    def service_stopped(self, name: str) -> Iterator[None]:
        """``docker compose stop NAME``, then ``start NAME`` on leaving: not restarted meanwhile."""
        process = self.processes[name]
        assert self.supervisor is not None, "up() first"
        with self.supervisor.held(name):
            process.stop(timeout=30)
            try:
                yield
            finally:
                process.start()

    def _healthy(self, url: str) -> bool:
        # Health URLs say localhost (inside the container); here the service listens on 127.0.0.1.
        response = httpx.get(url.replace("localhost", "127.0.0.1"), timeout=3)
        return response.status_code < 500 or response.status_code == 503

    def _mlflow_ready(self) -> bool:
        response = httpx.get(f"{self.mlflow_url}{MLFLOW_CURRENT_USER_PATH}", auth=self.mlflow_auth, timeout=5)
        return response.status_code == 200

    def down(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()  # before stopping anything: a stopped service is not a crashed one
            self.supervisor = None
        for process in reversed(list(self.processes.values())):
            process.stop(timeout=30)
        self.processes.clear()

    def __enter__(self) -> ProcessStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline.dev.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--root", default=str(REPO_ROOT / ".stack"), help="state and logs (default .stack/)")
    args = parser.parse_args(argv)
    stack = stack_from_environment(Path(args.root), os.environ)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stack.up()
        print(
            f"stack up: Airflow {stack.api_url} | Flower {stack.flower_url} | MLflow {stack.mlflow_url} | "
            f"model server {stack.serving_url} | Prometheus {stack.prometheus_url} | mail in {stack.mail_dir}; "
            f"credentials in {stack.root / 'secrets.json'}; "
            f"logs in {stack.root / 'logs'}",
            flush=True,
        )
        _supervise(stack, stop)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            stack.down()


def stack_from_environment(root: Path, env: Mapping[str, str]) -> ProcessStack:
    """The stack compose would start with this environment (its variables and defaults), kept under ``root``."""
    return ProcessStack(
        root=root,
        postgres=Postgres(
            host=env.get("POSTGRES_HOST", "127.0.0.1"),
            port=int(env.get("POSTGRES_PORT", "5432")),
            user=env.get("POSTGRES_USER", "postgres"),
            # compose insists on a password; a server with trust auth (like a developer's) ignores it.
            password=env.get("POSTGRES_PASSWORD") or "unused-with-trust-auth",
            airflow_db=env.get("AIRFLOW_DB_NAME", "airflow"),
            mlflow_db=env.get("MLFLOW_DB_NAME", "mlflow"),
            prediction_log_db=env.get("PREDICTION_LOG_DB_NAME", "prediction_log"),
        ),
        redis=Redis(
            host=env.get("REDIS_HOST", "127.0.0.1"),
            port=int(env.get("REDIS_PORT", "6379")),
            db=int(env.get("REDIS_DB", "0")),
            # Empty: compose's ${REDIS_PASSWORD:?} refuses to start, naming it.
            password=env.get("REDIS_PASSWORD", ""),
        ),
        ports={name: int(env.get(name, default)) for name, default in SERVICE_PORTS.items()},
    )


def _supervise(stack: ProcessStack, stop: threading.Event) -> None:
    """Wait until ``stop`` is set; StackError as soon as a service compose would not restart exits on its own
    (the supervisor restarts the others, logging each crash)."""
    restartable = stack.supervisor.restartable if stack.supervisor else frozenset()
    while not stop.wait(2):
        dead = [name for name, process in stack.processes.items() if not process.alive() and name not in restartable]
        if dead:
            raise StackError(f"service(s) exited: {dead}; logs in {stack.root / 'logs'}")


if __name__ == "__main__":
    sys.exit(main())
