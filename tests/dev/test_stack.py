"""The production stack (docker-compose.yaml) as local processes on the machine's real PostgreSQL and a Redis of its
own with a password: CeleryExecutor with two workers on different queues, Flower, FAB auth, MLflow server on
PostgreSQL behind its basic-auth app."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import redis
import sqlalchemy.exc
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from mlpipeline.config import PipelineConfig
from mlpipeline.dev.localstack import REPO_ROOT, AirflowClient
from mlpipeline.dev.mailcatcher import read_mailbox
from mlpipeline.dev.stack import (
    COMPOSE_ONLY_SERVICES,
    EXTERNAL_SERVICES,
    INIT_SERVICE,
    LOCAL_ONLY_FLAGS,
    START_ORDER,
    Postgres,
    ProcessStack,
    Redis,
    load_compose,
    local_argv,
    resolve_services,
)
from mlpipeline.payload import json_rows
from mlpipeline.prediction_store import engine_for, prediction_requests, predictions
from mlpipeline.stages.train import HOLDOUT_FILE, load_holdout

pytestmark = pytest.mark.airflow
DAG = "ml_pipeline"
AIRFLOW_SERVICES = [name for name in START_ORDER if name.startswith("airflow-") or name == "flower"]


# --- the compose file and the process stack cannot drift apart --------------------------------------------------


def _stack_for_inspection(tmp_path: Path) -> ProcessStack:
    return ProcessStack(
        root=tmp_path,
        postgres=Postgres("127.0.0.1", 5432, "u", "postgres-password", "airflow_db", "mlflow_db"),
        redis=Redis("127.0.0.1", 6379, 3, "redis-password"),
    )


def test_every_compose_service_runs_in_the_process_stack(tmp_path: Path) -> None:
    compose = load_compose()
    services = set(compose["services"])
    # Compose runs exactly what the process stack runs, plus the external and the compose-only services.
    assert services == {*EXTERNAL_SERVICES, INIT_SERVICE, *START_ORDER, *COMPOSE_ONLY_SERVICES}
    for name in services - set(EXTERNAL_SERVICES):
        assert "healthcheck" in compose["services"][name] or name == INIT_SERVICE, f"{name} has no health check"


def test_process_stack_runs_the_compose_commands_and_settings(tmp_path: Path) -> None:
    stack = _stack_for_inspection(tmp_path)
    variables = stack.variables()
    specs = resolve_services(load_compose(), variables)
    raw = load_compose()["services"]
    for name, spec in specs.items():
        argv = local_argv(spec)
        extra = LOCAL_ONLY_FLAGS.get(name, [])
        # Same arguments as compose, after the program, plus only the documented local flags.
        assert argv[1:] == spec.argv[1:] + extra, name
        assert Path(argv[0]).name == Path(spec.argv[0]).name or spec.argv[0] == "python", name
        # Every compose setting reaches the process, unchanged.
        process_env = stack._process_env(spec)
        for key, value in spec.environment.items():
            assert process_env[key] == value, (name, key)
        assert len(spec.environment) >= len(raw[name].get("environment", {})), name
    # One set of Airflow settings: identical for every Airflow component (JWT secret, Fernet key, execution API).
    airflow_envs = [
        {k: v for k, v in specs[name].environment.items() if k.startswith("AIRFLOW")} for name in AIRFLOW_SERVICES
    ]
    assert all(env == airflow_envs[0] for env in airflow_envs)
    assert airflow_envs[0]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert airflow_envs[0]["AIRFLOW__API_AUTH__JWT_SECRET"] == variables["AIRFLOW_JWT_SECRET"]
    assert airflow_envs[0]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{stack.api_url}/execution/"


def _secret_values(variables: dict[str, str]) -> dict[str, str]:
    names = re.findall(r"\$\{([A-Z_]+):\?", (REPO_ROOT / "docker-compose.yaml").read_text())
    return {name: variables[name] for name in names if not name.endswith(("_USER", "_USERNAME"))}


def test_no_secret_on_a_process_stack_command_line(tmp_path: Path) -> None:
    stack = _stack_for_inspection(tmp_path)
    variables = stack.variables()
    secrets = _secret_values(variables)
    assert {"REDIS_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVICE_PASSWORD"} <= set(secrets)
    for name, spec in resolve_services(load_compose(), variables).items():
        argv = " ".join(local_argv(spec))
        assert not [secret for secret, value in secrets.items() if value in argv], name


def test_the_process_stack_passes_only_what_compose_gives(tmp_path: Path) -> None:
    stack = _stack_for_inspection(tmp_path)
    specs = stack.services()
    with mock.patch.dict(os.environ, {"MLPIPELINE_MODEL_SIGNING_KEY": "the caller's", "REDISCLI_AUTH": "x"}):
        datasource_env = stack._process_env(specs["datasource"])
        worker_env = stack._process_env(specs["airflow-worker"])
    assert "MLPIPELINE_MODEL_SIGNING_KEY" not in datasource_env and "REDISCLI_AUTH" not in datasource_env
    assert worker_env["MLPIPELINE_MODEL_SIGNING_KEY"] == stack.variables()["MLPIPELINE_MODEL_SIGNING_KEY"]
    # MLflow's server runs from its own virtualenv (deploy/mlflow.Dockerfile's environment).
    assert local_argv(specs["mlflow"])[0] == str(REPO_ROOT / ".venv-mlflow" / "bin" / "python")


def test_env_example_names_every_required_secret() -> None:
    compose_text = (REPO_ROOT / "docker-compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", compose_text))
    example = (REPO_ROOT / ".env.example").read_text()
    declared = set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))
    assert required <= declared, required - declared
    assert (
        "AIRFLOW_JWT_SECRET" in required and "AIRFLOW_FERNET_KEY" in required and "AIRFLOW_ADMIN_PASSWORD" in required
    )


def test_every_queue_the_dag_uses_is_served_by_a_compose_worker() -> None:
    # The DAGs take their queues from mlpipeline_airflow.settings; its defaults are what compose must serve.
    settings_source = (REPO_ROOT / "src" / "mlpipeline_airflow" / "settings.py").read_text()
    used = set(re.findall(r'os\.environ\.get\("ML_PIPELINE_QUEUE_\w+", "(\w+)"\)', settings_source))
    assert used == {"default", "io", "training"}
    dag_sources = " ".join(path.read_text() for path in (REPO_ROOT / "dags").glob("*.py"))
    assert "ML_PIPELINE_QUEUE_" not in dag_sources and "QUEUE_TRAINING" in dag_sources
    served: set[str] = set()
    for service in load_compose()["services"].values():
        command = service.get("command") or []
        if "worker" in command and "--queues" in command:
            served |= set(command[command.index("--queues") + 1].split(","))
    assert used <= served


# --- the real thing --------------------------------------------------------------------------------------------


# The `stack` fixture (the running production stack, one per package run) is in tests/dev/conftest.py.


def _secrets(stack: ProcessStack) -> dict[str, str]:
    return json.loads((stack.root / "secrets.json").read_text())


def _client(stack: ProcessStack) -> AirflowClient:
    secrets = _secrets(stack)
    return AirflowClient(stack.api_url, secrets["AIRFLOW_ADMIN_USERNAME"], secrets["AIRFLOW_ADMIN_PASSWORD"])


def test_mlflow_and_redis_refuse_anonymous_clients(stack: ProcessStack) -> None:
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(search, timeout=30).status_code == 401
    username = stack.mlflow_auth[0]
    assert httpx.get(search, auth=(username, "wrong-password"), timeout=30).status_code == 401
    assert httpx.get(search, auth=stack.mlflow_auth, timeout=30).status_code == 200
    assert httpx.get(f"{stack.mlflow_url}/health", timeout=30).status_code == 200  # the only open route
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=stack.redis.host, port=stack.redis.port).ping()
    assert redis.Redis(host=stack.redis.host, port=stack.redis.port, password=stack.redis.password).ping()


def _command_lines() -> str:
    """Every process's command line on this machine (the stack's secrets are random: a match is ours)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # exited meanwhile
            continue
    return "\n".join(lines)


def _flower(stack: ProcessStack, path: str) -> dict:
    secrets = _secrets(stack)
    response = httpx.get(
        f"{stack.flower_url}{path}", auth=(secrets["FLOWER_USER"], secrets["FLOWER_PASSWORD"]), timeout=30
    )
    response.raise_for_status()
    return response.json()


def _wait(client: AirflowClient, run_ids: list[str], timeout: float = 900) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {run_id: client.run_state(DAG, run_id) for run_id in run_ids}
        if all(state in ("success", "failed") for state in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"runs did not finish: {states}")


def _task_instances(client: AirflowClient, run_id: str) -> list[dict]:
    return client.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]


def test_the_api_refuses_anonymous_calls_and_flower_asks_for_credentials(stack: ProcessStack) -> None:
    assert httpx.get(f"{stack.api_url}/api/v2/dags").status_code == 401
    assert httpx.post(f"{stack.api_url}/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None}).status_code == 401
    bad = httpx.post(f"{stack.api_url}/auth/token", json={"username": "admin", "password": "wrong"})
    assert bad.status_code in (401, 403)
    assert httpx.get(f"{stack.flower_url}/api/workers").status_code == 401
    assert httpx.get(f"{stack.flower_url}/api/workers", auth=("flower", "wrong")).status_code == 401
    assert _flower(stack, "/api/workers") is not None  # and the configured credentials work


def test_ml_pipeline_runs_on_celery_workers_by_queue(stack: ProcessStack) -> None:
    client = _client(stack)
    client.wait_for_dag(DAG)
    run_id = client.trigger(DAG, {"accuracy_threshold": 0})
    assert _wait(client, [run_id]) == {run_id: "success"}

    workers = _flower(stack, "/api/workers?refresh=1")
    queues_of = {name: {q["name"] for q in info.get("active_queues", [])} for name, info in workers.items()}
    assert len(queues_of) == 2 and {"training"} in queues_of.values(), queues_of
    flower_tasks = _flower(stack, "/api/tasks")
    worker_of: dict[str, str] = {}
    for task in flower_tasks.values():
        # args is the repr of the Airflow workload (JSON); it names the task instance it executes.
        match = re.search(r'"ti":\s*\{"id":\s*"([0-9a-f-]+)"', task.get("args") or "")
        if match and task.get("worker"):
            worker_of[match.group(1)] = task["worker"]

    ran = [ti for ti in _task_instances(client, run_id) if ti["state"] == "success" and ti["task_id"] != "end"]
    assert {ti["task_id"] for ti in ran} >= {
        "crawl_data",
        "check_data",
        "data_changed",
        "etl",
        "train_model",
        "validate_model",
        "decide",
        "deploy_model",
        "monitor",
    }
    expected_queue = {
        "crawl_data": "io",
        "check_data": "default",
        "data_changed": "default",
        "report_unchanged": "io",
        "retrain_alert": "io",
        "deploy_model": "io",
        "success_email": "io",
        "train_model": "training",
        "validate_model": "training",
        "decide": "default",
        "start": "default",
        "list_candidates": "default",
        "etl": "default",
        "monitor": "default",
    }
    for ti in ran:
        assert ti["queue"] == expected_queue[ti["task_id"]], ti["task_id"]
        worker = worker_of[ti["id"]]  # Flower saw this very task instance...
        assert ti["queue"] in queues_of[worker], (ti["task_id"], worker)  # ...on a worker serving its queue
        assert ti["hostname"] == worker.split("@", 1)[1], (ti["hostname"], worker)

    # Whatever ran (workers, their task processes, MLflow, Redis), no secret was on a command line.
    leaked = [name for name, value in _secret_values(stack.variables()).items() if value in _command_lines()]
    assert not leaked, leaked

    registry = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    username, password = stack.mlflow_auth
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}):
        champion = registry.get_model_version_by_alias("churn_classifier", "champion")
    assert champion.source.startswith("models:/") or champion.source
    served = httpx.get(f"{stack.serving_url}/model", timeout=10).json()
    assert str(served["version"]) == str(champion.version)
    subjects = [str(m["subject"]) for m in read_mailbox(stack.mail_dir)]
    assert f"[ml_pipeline] deployed churn_classifier v{champion.version}: accuracy" in " ".join(subjects)


def test_three_runs_at_once_succeed_and_the_training_pool_holds(stack: ProcessStack) -> None:
    client = _client(stack)
    client.wait_for_dag(DAG)
    # Same data as the first test's run: each run trains with its own seed, or it would find nothing new to train.
    run_ids = [client.trigger(DAG, {"accuracy_threshold": 0, "random_state": seed}) for seed in (1, 2, 3)]
    assert set(_wait(client, run_ids).values()) == {"success"}

    spans = []
    for run_id in run_ids:
        for ti in _task_instances(client, run_id):
            if ti["task_id"] == "train_model":
                assert ti["pool"] == "training"
                spans.append((datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])))
    assert len(spans) == 3
    slots = client.get("/api/v2/pools/training")["slots"]
    assert client.get("/api/v2/pools/deploy")["slots"] == 1
    for start, _ in spans:
        running_then = sum(1 for other_start, other_end in spans if other_start <= start < other_end)
        assert running_then <= slots, f"{running_then} training tasks ran at once with {slots} slot(s)"


# --- live monitoring: the prediction log and Prometheus --------------------------------------------------------


def _served_model(stack: ProcessStack) -> dict:
    """What the model server answers with; run alone (no earlier test deployed one), one pipeline run deploys it."""
    served = httpx.get(f"{stack.serving_url}/model", timeout=10)
    if served.status_code == 503:
        client = _client(stack)
        client.wait_for_dag(DAG)
        run_id = client.trigger(DAG, {"accuracy_threshold": 0})
        assert _wait(client, [run_id]) == {run_id: "success"}
        served = httpx.get(f"{stack.serving_url}/model", timeout=10)
    assert served.status_code == 200, served.text
    return served.json()


def _holdout_rows(stack: ProcessStack, count: int = 4) -> list[dict]:
    holdout = next((stack.root / "data").rglob(HOLDOUT_FILE))
    features, _ = load_holdout(holdout, PipelineConfig().dataset_schema)
    return json_rows(features.head(count))


def _logged_request(stack: ProcessStack, request_id: str, timeout: float = 60) -> tuple[Any, list[Any]]:
    """The request's row and its predicted rows in the prediction log (written off the request path: polled).
    The password, if the server wants one, comes from PGPASSWORD as compose gives it."""
    with mock.patch.dict(os.environ, {"PGPASSWORD": stack.postgres.password}):
        engine = engine_for(stack.prediction_log_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(sqlalchemy.exc.ProgrammingError), engine.connect() as connection:
                    where = prediction_requests.c.request_id == request_id
                    request = connection.execute(select(prediction_requests).where(where)).first()
                    rows = connection.execute(
                        select(predictions).where(predictions.c.request_id == request_id).order_by("row_index")
                    ).all()
                    if request is not None and len(rows) == request.rows:
                        return request, list(rows)
                time.sleep(0.5)
        finally:
            engine.dispose()
    raise AssertionError(f"request {request_id} not in the prediction log after {timeout} s")


def test_predictions_land_in_the_prediction_log_with_the_version_that_answered(stack: ProcessStack) -> None:
    served = _served_model(stack)
    rows = _holdout_rows(stack)
    answer = httpx.post(f"{stack.serving_url}/predict", json={"rows": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert answer.headers["x-request-id"] == body["request_id"]
    assert str(body["model_version"]) == str(served["version"])

    # The prediction log is the stack's own database (not Airflow's or MLflow's), as compose's postgres-init makes it.
    assert stack.prediction_log_url.endswith(f"/{stack.postgres.prediction_log_database}")
    assert stack.postgres.prediction_log_database not in (stack.postgres.airflow_db, stack.postgres.mlflow_db)
    request, logged = _logged_request(stack, body["request_id"])
    assert (request.model_name, request.model_version) == ("churn_classifier", str(body["model_version"]))
    assert (request.status_code, request.rows) == (200, len(rows))
    assert [row.row_index for row in logged] == list(range(len(rows)))
    assert {row.model_version for row in logged} == {str(body["model_version"])}
    assert [row.prediction for row in logged] == body["predictions"]
    assert [row.features for row in logged] == rows


def _prometheus(stack: ProcessStack, path: str, **params: str) -> Any:
    response = httpx.get(f"{stack.prometheus_url}{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()["data"]


def _own_metric(stack: ProcessStack, name: str) -> float:
    """A sample of the model server's own /metrics, read directly."""
    text = httpx.get(f"{stack.serving_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in the model server's /metrics")


def test_prometheus_scrapes_the_model_server_and_flower(stack: ProcessStack) -> None:
    # A refused /predict is enough for a labelled series (no model or pipeline run needed).
    assert httpx.post(f"{stack.serving_url}/predict", json={"rows": [{"bogus": 1}]}, timeout=30).status_code >= 400
    predict_requests = 'sum(mlpipeline_serving_requests_total{job="model-server",endpoint="/predict"})'
    version_query = 'mlpipeline_serving_model_version{job="model-server"}'
    deadline = time.monotonic() + 120  # one scrape every 15 s
    health: dict[str, str] = {}
    seen: dict[str, list[float]] = {}
    while time.monotonic() < deadline:
        health = {
            target["labels"]["job"]: target["health"]
            for target in _prometheus(stack, "/api/v1/targets")["activeTargets"]
        }
        seen = {
            query: [float(sample["value"][1]) for sample in _prometheus(stack, "/api/v1/query", query=query)["result"]]
            for query in (version_query, predict_requests)
        }
        version = _own_metric(stack, "mlpipeline_serving_model_version")
        if (
            health == {"model-server": "up", "flower": "up"}
            and seen[version_query] == [version]
            and seen[predict_requests]
        ):
            break
        time.sleep(2)
    assert health == {"model-server": "up", "flower": "up"}, health
    assert seen[version_query] == [_own_metric(stack, "mlpipeline_serving_model_version")], seen
    assert seen[predict_requests] and seen[predict_requests][0] >= 1, seen
