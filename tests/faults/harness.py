"""What the fault-injection tests share: the process stack on real PostgreSQL and a Redis we can restart, finding
and killing a task's process by PID, a /predict prober, and the checks every fault must pass.

Every process killed here was started by these tests (the stack's services and their children), always by PID;
all traffic goes to 127.0.0.1; the only database connections terminated are those to the stack's own database.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg2
from mlflow import MlflowClient
from mlflow.entities import ViewType

from mlpipeline.config import PipelineConfig
from mlpipeline.dev.localstack import AirflowClient, free_port
from mlpipeline.dev.mailcatcher import read_mailbox
from mlpipeline.dev.stack import Postgres, ProcessStack, Redis
from mlpipeline.payload import json_rows
from mlpipeline.registry import DEPLOY_STATUS_TAG, MODEL_FINGERPRINT_TAG
from mlpipeline.stages.train import HOLDOUT_FILE, load_holdout
from tests.services import _redis_executable, _wait_for_redis, databases, postgres_server

DAG = "ml_pipeline"
MODEL = "churn_classifier"
ALIAS = "champion"
FINAL_STATES = ("success", "failed")
# Small data, several runs at once allowed (scenario h), compose's 60 s task heartbeat timeout.
STACK_OVERRIDES = {"ML_PIPELINE_MAX_ACTIVE_RUNS": "4", "TRAINING_POOL_SLOTS": "1", "DATASOURCE_ROWS": "3000"}


class RestartableRedis:
    """A password-protected ``redis-server`` of our own on a fixed port, stopped (SIGKILL by PID) and started
    again at will, as a crashed Redis container would be; no persistence, like compose's."""

    def __init__(self) -> None:
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.log_path = Path(tempfile.mkstemp(prefix="mlp-fault-redis-", suffix=".log")[1])
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [_redis_executable(), "-", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        with open(self.log_path, "ab") as log:
            self.server = subprocess.Popen(
                [*argv, "--appendonly", "no"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
        assert self.server.stdin is not None
        self.server.stdin.write(f"requirepass {self.password}\n".encode())
        self.server.stdin.close()
        _wait_for_redis(self.server, self.port, self.password, str(self.log_path))

    def kill(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.kill(self.server.pid, signal.SIGKILL)
            self.server.wait(10)

    @contextlib.contextmanager
    def down(self, seconds: float) -> Iterator[None]:
        """Redis dead for ``seconds`` (after the body ran), then back on the same port."""
        self.kill()
        try:
            yield
            time.sleep(seconds)
        finally:
            self.start()


@dataclass
class FaultStack:
    stack: ProcessStack
    redis: RestartableRedis
    client: AirflowClient
    rows: list[dict] = field(default_factory=list)  # a valid /predict body's rows, once a model was trained

    @property
    def data_dir(self) -> Path:
        return self.stack.root / "data"


@contextlib.contextmanager
def fault_stack(root: Path) -> Iterator[FaultStack]:
    redis = RestartableRedis()
    with (
        postgres_server() as pg,
        databases(pg, "airflow", "mlflow", "prediction_log") as (airflow_db, mlflow_db, log_db),
    ):
        redis.start()
        stack = ProcessStack(
            root=root,
            postgres=Postgres(pg.host, pg.port, pg.user, pg.password, airflow_db, mlflow_db, log_db),
            redis=Redis("127.0.0.1", redis.port, 0, redis.password),
            overrides=dict(STACK_OVERRIDES),
        )
        try:
            stack.up()
            secret = stack.variables()
            client = AirflowClient(stack.api_url, secret["AIRFLOW_ADMIN_USERNAME"], secret["AIRFLOW_ADMIN_PASSWORD"])
            client.wait_for_dag(DAG)
            yield FaultStack(stack, redis, client)
        finally:
            stack.down()
            redis.kill()
            redis.log_path.unlink(missing_ok=True)


# --- runs ---------------------------------------------------------------------------------------------------------


def trigger(faults: FaultStack, seed: int) -> str:
    """A run that trains (its own seed: not 'unchanged') and deploys whatever it trains (tolerance 1)."""
    conf = {"accuracy_threshold": 0, "random_state": seed, "champion_tolerance": 1.0}
    return faults.client.trigger(DAG, conf)


def task_instance(faults: FaultStack, run_id: str, task_id: str) -> dict:
    body = faults.client.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")
    return next(ti for ti in body["task_instances"] if ti["task_id"] == task_id)


def task_instances(faults: FaultStack, run_id: str) -> list[dict]:
    return faults.client.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]


def wait_for_task_state(faults: FaultStack, run_id: str, task_id: str, states: set[str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, StopIteration):
            ti = task_instance(faults, run_id, task_id)
            if ti["state"] in states:
                return ti
            if faults.client.run_state(DAG, run_id) in FINAL_STATES:
                raise AssertionError(f"run {run_id} ended before {task_id} reached {states}: {ti}")
        time.sleep(0.1)
    raise AssertionError(f"{task_id} of {run_id} not in {states} within {timeout:.0f} s")


def wait_for_runs(faults: FaultStack, run_ids: list[str], timeout: float = 900) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            states = {run_id: faults.client.run_state(DAG, run_id) for run_id in run_ids}
            if all(state in FINAL_STATES for state in states.values()):
                return states
        time.sleep(1)
    raise AssertionError(f"runs did not end within {timeout:.0f} s: {states}")


def tries(faults: FaultStack, run_id: str) -> dict[str, int]:
    """Tries each task used (1 = no retry)."""
    return {ti["task_id"]: int(ti["try_number"]) for ti in task_instances(faults, run_id) if ti["try_number"]}


# --- processes ----------------------------------------------------------------------------------------------------


def task_process(faults: FaultStack, worker: str, ti_id: str, timeout: float = 60) -> psutil.Process:
    """The process running task instance ``ti_id`` under ``worker`` (its title is 'airflow worker -- <ti id>')."""
    popen = faults.stack.processes[worker].popen
    assert popen is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(popen.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if ti_id in " ".join(child.cmdline()):
                    return child
        time.sleep(0.05)
    raise AssertionError(f"no process of task instance {ti_id} under {worker}")


def kill_service_hard(faults: FaultStack, name: str) -> None:
    """kill -9 a whole service (a crashed container): the process and every descendant, by PID."""
    popen = faults.stack.processes[name].popen
    assert popen is not None
    leader = psutil.Process(popen.pid)
    family = [leader, *leader.children(recursive=True)]
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def terminate_airflow_connections(faults: FaultStack) -> int:
    """Drop every connection to the stack's own Airflow database (never another database)."""
    pg = faults.stack.postgres
    admin = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (pg.airflow_db,),
            )
            return len(cursor.fetchall())
    finally:
        admin.close()


# --- the model server keeps answering -----------------------------------------------------------------------------


class Prober:
    """POSTs /predict every ~100 ms in a background thread; counts answers that are not 200."""

    def __init__(self, url: str, rows: list[dict]) -> None:
        self.url, self.rows = url, rows
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while not self._stop.wait(0.1):
                try:
                    response = http.post("/predict", json={"rows": self.rows})
                    if response.status_code == 200:
                        self.ok += 1
                        continue
                    self.errors.append(f"HTTP {response.status_code}")
                except httpx.HTTPError as exc:
                    self.errors.append(type(exc).__name__)
                self.failed += 1

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def predict_rows(faults: FaultStack, count: int = 5) -> list[dict]:
    holdout = next(faults.data_dir.rglob(HOLDOUT_FILE))
    features, _ = load_holdout(holdout, PipelineConfig().dataset_schema)
    return json_rows(features.head(count))


# --- what every fault must leave behind ---------------------------------------------------------------------------


def registry(faults: FaultStack) -> MlflowClient:
    # The MLflow service account reaches the client through MLflow's own variables (set by the module fixture).
    return MlflowClient(tracking_uri=faults.stack.mlflow_url, registry_uri=faults.stack.mlflow_url)


def failure_emails(faults: FaultStack, run_id: str) -> list[str]:
    subjects = [str(message["subject"]) for message in read_mailbox(faults.stack.mail_dir)]
    return [subject for subject in subjects if "FAILED" in subject and run_id in subject]


def assert_sound(faults: FaultStack) -> str:
    """The champion passed its smoke test and is what the server serves; no model registered twice; no temp file
    left under the data directory; no MLflow run left RUNNING. Returns the champion's version."""
    client = registry(faults)
    champion = client.get_model_version_by_alias(MODEL, ALIAS)
    assert champion.tags.get(DEPLOY_STATUS_TAG) == "deployed", champion.tags
    versions = client.search_model_versions(f"name = '{MODEL}'")
    fingerprints = [v.tags.get(MODEL_FINGERPRINT_TAG) for v in versions]
    assert None not in fingerprints and len(fingerprints) == len(set(fingerprints)), fingerprints
    debris = [str(p) for p in faults.data_dir.rglob(".*.tmp")]
    assert not debris, debris
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL)
    assert not running, [(r.info.run_id, r.info.run_name) for r in running]
    served = httpx.get(f"{faults.stack.serving_url}/model", timeout=10).json()
    deadline = time.monotonic() + 30  # the server may still be reloading after a restart or a rollback
    while str(served.get("version")) != str(champion.version) and time.monotonic() < deadline:
        time.sleep(1)
        served = httpx.get(f"{faults.stack.serving_url}/model", timeout=10).json()
    assert str(served.get("version")) == str(champion.version), (served, champion.version)
    return str(champion.version)
