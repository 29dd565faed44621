"""The embedded (laptop) stack as local processes: Airflow on SQLite + LocalExecutor, MLflow on SQLite, the
bundled data source, a local SMTP catcher and the model server. Used by ``make demo`` and by the tests.

Nothing here imports Airflow: Airflow is driven through its CLI and REST API, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from mlpipeline.dev import public_datasets
from mlpipeline.storage import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[3]
VARIABLE_PREFIX = "AIRFLOW_VAR_"
BUNDLED_DATASET = "churn"  # the data source's own synthetic data (its /api/records), the pipeline's defaults


def variables_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The pipeline Variables set as ``AIRFLOW_VAR_<NAME>`` in ``environ``, by their (lower-case) names."""
    return {
        name[len(VARIABLE_PREFIX) :].lower(): value
        for name, value in environ.items()
        if name.startswith(VARIABLE_PREFIX) and len(name) > len(VARIABLE_PREFIX)
    }


class StackError(RuntimeError):
    """A local service could not be started; the message says which and where its log is."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for port 0 is also handed to other
# processes' outgoing connections, which can take it between choosing it and the service binding it.
_SERVICE_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the ephemeral range, not handed out before by this process."""
    for _ in range(500):
        port = random.choice(_SERVICE_PORTS)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    raise StackError(f"no free port in {_SERVICE_PORTS.start}-{_SERVICE_PORTS.stop - 1} after 500 tries")


def new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def stored_secrets(path: Path, generate: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Secrets generated once for a stack root (mode 600) and read back on every later start; a secret added to
    ``generate`` since the file was written is generated and stored then, the others are kept."""
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    generated = generate()
    if set(generated) <= set(stored):
        return stored
    values = {**generated, **stored}
    atomic_write_json(path, values)
    path.chmod(0o600)
    return values


@dataclass(frozen=True)
class Ports:
    airflow_api: int = 8080
    serving: int = 8000
    datasource: int = 8765
    smtp: int = 8025

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Ports:
        return cls(
            airflow_api=int(environ.get("DEMO_AIRFLOW_PORT", cls.airflow_api)),
            serving=int(environ.get("DEMO_SERVING_PORT", cls.serving)),
            datasource=int(environ.get("DEMO_DATASOURCE_PORT", cls.datasource)),
            smtp=int(environ.get("DEMO_SMTP_PORT", cls.smtp)),
        )

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port())


@dataclass
class ManagedProcess:
    """A child process in its own process group, logging to a file, stopped with SIGTERM then SIGKILL."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(
                    f"{self.name} exited with code {self.popen.returncode if self.popen else '?'} before {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.25)
        raise StackError(f"{self.name}: no {what} after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def http_ok(url: str, *, accept: tuple[int, ...] = (200,)) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code in accept


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    return check


@dataclass
class LocalStack:
    """Everything ``make demo`` runs, rooted at one directory (``.demo/`` by default)."""

    root: Path
    ports: Ports = field(default_factory=Ports)
    data_dir: Path | None = None
    dataset_rows: int = 5000
    variables: dict[str, str] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.data_dir = (self.data_dir or self.root / "data").resolve()

    # --- layout -----------------------------------------------------------------------------------------
    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def prediction_log_url(self) -> str:
        """The model server's prediction log (SQLite beside the stack), read by the model_monitoring DAG."""
        return f"sqlite:///{self.root / 'predictions.db'}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow_api}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.serving}"

    @property
    def datasource_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.datasource}"

    def _secrets(self) -> dict[str, str]:
        """Generated once per stack root and reused, so a second run talks to the same Airflow."""
        return stored_secrets(
            self.root / "secrets.json",
            lambda: {
                "jwt_secret": secrets.token_urlsafe(32),
                "fernet_key": new_fernet_key(),
                "admin_password": secrets.token_urlsafe(12),
                "model_signing_key": secrets.token_hex(32),
                "serving_token": secrets.token_urlsafe(32),
            },
        )

    def pipeline_secrets(self) -> dict[str, str]:
        """The model signing key and the serving token: the environment's when set (as a deployment's .env, or the
        test session's, so that processes outside the stack verify the same signatures), else this root's own."""
        secret = self._secrets()
        return {
            "MLPIPELINE_MODEL_SIGNING_KEY": os.environ.get("MLPIPELINE_MODEL_SIGNING_KEY")
            or secret["model_signing_key"],
            "MLPIPELINE_SERVING_TOKEN": os.environ.get("MLPIPELINE_SERVING_TOKEN") or secret["serving_token"],
        }

    def dataset_url(self, name: str) -> str:
        """Where this stack's data source serves a dataset: ``churn`` (its own) or a public one (by name)."""
        if name == BUNDLED_DATASET:
            return f"{self.datasource_url}/api/records"
        return self.datasource_url + public_datasets.get(name).url_path

    def dataset_variables(self, name: str) -> dict[str, str]:
        """The Variables that run the pipeline on a dataset this stack's data source serves: its URL, its target
        (the feature columns are inferred by the first run) and a registered model of its own, so that one
        dataset's champion never competes with another's. ``churn``: none, the defaults are its settings."""
        if name == BUNDLED_DATASET:
            return {}
        try:
            dataset = public_datasets.get(name)
        except public_datasets.UnknownDataset as exc:
            raise StackError(f"{exc} (or {BUNDLED_DATASET}, the default)") from None
        kind = "regressor" if dataset.task == "regression" else "classifier"
        return {
            "crawl_url": self.dataset_url(name),
            "dataset_schema": json.dumps({"target": dataset.target}),
            "registered_model_name": f"{name}_{kind}",
        }

    def pipeline_variables(self) -> dict[str, str]:
        """The pipeline settings for this stack, as Airflow Variables (``AIRFLOW_VAR_<NAME>``); :attr:`variables`
        override the stack's defaults."""
        return {
            "crawl_url": f"{self.datasource_url}/api/records",
            "data_dir": str(self.data_dir),
            "mlflow_tracking_uri": self.mlflow_uri,
            "mlflow_artifact_location": str(self.root / "mlartifacts"),
            "serving_url": self.serving_url,
            "prediction_log_url": self.prediction_log_url,
            **self.variables,
        }

    def env(self) -> dict[str, str]:
        secret = self._secrets()
        home = self.airflow_home
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW"))}
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API_AUTH__JWT_SECRET": secret["jwt_secret"],
                "AIRFLOW__API_AUTH__JWT_ISSUER": "ml-pipeline-local",
                "AIRFLOW__CORE__FERNET_KEY": secret["fernet_key"],
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
                # The scheduler's idle sleep (1 s by default) is most of the gap between one task and the next.
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # A task parses its DAG file on start, importing pandas, scikit-learn and MLflow on the way: on a
                # busy laptop that exceeds the 30 s default and the task is rescheduled again and again.
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "180",
                "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "240",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "airflow"),
                "AIRFLOW_CONN_SMTP_DEFAULT": (
                    f"smtp://127.0.0.1:{self.ports.smtp}?disable_ssl=true&disable_tls=true&timeout=10&retry_limit=2"
                ),
                "ML_PIPELINE_SCHEDULE": "none",
                "MODEL_MONITORING_SCHEDULE": "none",  # the demo triggers it once its traffic is in
                "MLFLOW_TRACKING_URI": self.pipeline_variables()["mlflow_tracking_uri"],
                # MLflow's telemetry thread cannot reach the internet and races HTTP requests over os.environ.
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
                **self.pipeline_secrets(),
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name, value in self.pipeline_variables().items():
            env[f"AIRFLOW_VAR_{name.upper()}"] = value
        return env

    @property
    def admin_password(self) -> str:
        return self._secrets()["admin_password"]

    # --- processes --------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(name, argv, env or self.env(), self.logs / f"{name}.log").start()
        self.processes.append(process)
        return process

    def check_ports(self) -> None:
        busy = [f"{name}={port}" for name, port in vars(self.ports).items() if not port_is_free(port)]
        if busy:
            raise StackError(
                f"port(s) already in use: {', '.join(busy)}. Stop what uses them or choose others with "
                "DEMO_AIRFLOW_PORT / DEMO_SERVING_PORT / DEMO_DATASOURCE_PORT / DEMO_SMTP_PORT."
            )

    def airflow(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command in this stack's environment."""
        result = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def init_airflow(self) -> None:
        home = self.airflow_home
        home.mkdir(parents=True, exist_ok=True)
        passwords = home / "passwords.json"
        if not passwords.exists():
            atomic_write_json(passwords, {"admin": self.admin_password})
        self.airflow("db", "migrate")
        # The DAG's training task runs in this pool; LocalExecutor leaves tasks of a missing pool unscheduled.
        self.airflow("pools", "set", "training", "1", "Caps how many models train at once")
        self.airflow("pools", "set", "deploy", "1", "Serialises deploys: one run moves the champion alias at a time")

    def start_services(self) -> None:
        """Data source, SMTP catcher and model server: what the pipeline talks to."""
        python = sys.executable
        self._spawn(
            "datasource",
            [
                python,
                "-m",
                "mlpipeline.dev.datasource",
                "--port",
                str(self.ports.datasource),
                "--rows",
                str(self.dataset_rows),
            ],
        ).wait_until(http_ok(f"{self.datasource_url}/health"), 60, "health check")
        self._spawn(
            "mailcatcher",
            [python, "-m", "mlpipeline.dev.mailcatcher", "--port", str(self.ports.smtp), "--dir", str(self.mail_dir)],
        ).wait_until(tcp_open(self.ports.smtp), 30, "SMTP port")
        variables = self.pipeline_variables()
        self.start_model_server(
            self.ports.serving, variables.get("registered_model_name"), variables.get("champion_alias"), "serving"
        )

    def start_model_server(
        self, port: int, model_name: str | None = None, alias: str | None = None, name: str | None = None
    ) -> str:
        """A model server on ``port`` for a registered model (default: the pipeline's default model) and alias;
        returns its URL once it answers. Several can run side by side, one per registered model."""
        env = {**self.env(), "MLPIPELINE_POLL_SECONDS": "5"}
        # The same log the Airflow side reads as the prediction_log_url Variable (overridable like the others).
        env["MLPIPELINE_PREDICTION_LOG_URL"] = self.pipeline_variables()["prediction_log_url"]
        if model_name:
            env["MLPIPELINE_MODEL_NAME"] = model_name
        if alias:
            env["MLPIPELINE_MODEL_ALIAS"] = alias
        url = f"http://127.0.0.1:{port}"
        self._spawn(
            name or f"serving-{model_name}", [sys.executable, "-m", "mlpipeline.serving", "--port", str(port)], env
        ).wait_until(http_ok(f"{url}/health", accept=(200, 503)), 240, "health check")
        return url

    def start_airflow(self) -> None:
        airflow = str(Path(sys.executable).parent / "airflow")
        api_server = self._spawn(
            "api-server", [airflow, "api-server", "--port", str(self.ports.airflow_api), "--workers", "1"]
        )
        self._spawn("dag-processor", [airflow, "dag-processor"])
        self._spawn("scheduler", [airflow, "scheduler", "--skip-serve-logs"])
        # All three start together; the API server's health is what the demo and the tests talk to first.
        api_server.wait_until(http_ok(f"{self.api_url}/api/v2/monitor/health"), 180, "health check")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AirflowClient:
    """Just enough of Airflow's REST API v2 to trigger a DAG and follow it."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        response = self.http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise StackError(f"Airflow refused the login ({response.status_code}): {response.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def get(self, path: str) -> dict:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.http.get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return
            time.sleep(1)
        errors = self.http.get("/api/v2/importErrors").text[:2000]
        raise StackError(f"DAG {dag_id} did not appear within {timeout:.0f} s; import errors: {errors}")

    def set_variable(self, key: str, value: str) -> None:
        """Create or update an Airflow Variable (infrastructure settings are Variables, never run conf)."""
        response = self.http.patch(f"/api/v2/variables/{key}", json={"key": key, "value": value})
        if response.status_code == 404:
            response = self.http.post("/api/v2/variables", json={"key": key, "value": value})
        if response.status_code not in (200, 201):
            raise StackError(f"setting Variable {key} failed ({response.status_code}): {response.text[:300]}")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = self.http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        if response.status_code != 200:
            raise StackError(f"trigger failed ({response.status_code}): {response.text[:500]}")
        return str(response.json()["dag_run_id"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        body = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's newest runs, newest first: ``dag_run_id``, ``state``, ``run_type`` (``asset_triggered``, ...)."""
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"])
