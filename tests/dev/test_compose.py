"""docker-compose.yaml as a real compose implementation reads it (Debian's ``docker-compose``, no Docker daemon
needed): it parses, it refuses to start without each secret, no secret is on a command line, and every service
gets the settings it needs and no secret it does not."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlpipeline.dev.localstack import REPO_ROOT
from tests import services

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
MLFLOW_PORT_OVERRIDE = REPO_ROOT / "deploy" / "compose.mlflow-port.yaml"
INSTALL = "apt-get install -y docker-compose"
REQUIRED = sorted(set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_FILE.read_text(encoding="utf-8"))))
AIRFLOW_WORKERS = ("airflow-worker", "airflow-worker-training")
# Services whose processes run MLflow code (client or server).
MLFLOW_USERS = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    *AIRFLOW_WORKERS,
    "flower",
    "mlflow",
    "model-server",
)
PIPELINE_SECRETS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLPIPELINE_SERVING_TOKEN",
    "MLPIPELINE_MODEL_SIGNING_KEY",
)


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(f"docker-compose is not installed; install it (as root) with: {INSTALL}")
    return found


def _env_file(tmp_path: Path, omit: str | None = None) -> tuple[Path, dict[str, str]]:
    """Every variable .env.example lists, the empty (secret) ones filled with fresh random values."""
    values = {}
    for name, value in re.findall(r"^([A-Z_]+)=(.*)$", (REPO_ROOT / ".env.example").read_text(), flags=re.M):
        values[name] = value or secrets.token_urlsafe(18)
    values.pop(omit, None)
    path = tmp_path / f"env-without-{omit}" if omit else tmp_path / "env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path, values


def compose_config(env_file: Path, *extra_files: Path) -> subprocess.CompletedProcess[str]:
    files = [arg for path in (COMPOSE_FILE, *extra_files) for arg in ("-f", str(path))]
    return subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), *files, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        # Only the env file: the test session's own MLPIPELINE_* variables must not satisfy compose.
        env={"PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    """The compose model docker-compose builds from the file and a complete env file, and the env's values."""
    env_file, values = _env_file(tmp_path_factory.mktemp("compose"))
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout), values


def test_docker_compose_validates_the_file_with_every_secret_set(tmp_path: Path) -> None:
    env_file, _ = _env_file(tmp_path)
    result = subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", REQUIRED)
def test_docker_compose_refuses_to_start_without_each_secret(tmp_path: Path, secret: str) -> None:
    env_file, _ = _env_file(tmp_path, omit=secret)
    result = compose_config(env_file)
    assert result.returncode != 0
    assert secret in result.stderr, result.stderr


def test_every_required_secret_is_listed_as_one(rendered: tuple[dict[str, Any], dict[str, str]]) -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    required_section = example.split("# --- optional")[0]
    listed = set(re.findall(r"^([A-Z_]+)=", required_section, flags=re.M))
    assert set(REQUIRED) <= listed, set(REQUIRED) - listed
    assert {"REDIS_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVICE_PASSWORD", "AIRFLOW_API_SECRET_KEY"} <= listed


def _argv_and_checks(service: dict[str, Any]) -> list[str]:
    """Every word of the service's entrypoint, command and health check (each may be a shell script)."""
    parts = [service.get("entrypoint"), service.get("command"), service.get("healthcheck", {}).get("test")]
    return [word for part in parts if part for word in ([part] if isinstance(part, str) else part)]


def _expanded_secrets(command_lines: list[str], env: dict[str, str], secret_values: dict[str, str]) -> list[str]:
    """Secret-carrying variables a shell expands into the arguments of a program (``printf``, a shell builtin that
    feeds another program's stdin, has no process of its own)."""
    leaked = []
    for line in command_lines:
        for segment in re.split(r"\|\||&&|\||;", line):
            words = segment.split()
            for variable in re.findall(r"\$\$?\{?(\w+)\}?", segment):
                carries_secret = any(value in env.get(variable, "") for value in secret_values.values())
                if carries_secret and words and words[0] != "printf":
                    leaked.append(f"${variable} in `{segment.strip()}`")
    return leaked


def test_no_secret_is_on_any_command_line(rendered: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, values = rendered
    usernames = ("POSTGRES_USER", "FLOWER_USER", "AIRFLOW_ADMIN_USERNAME")
    secret_values = {name: values[name] for name in REQUIRED if name not in usernames}
    for name, service in config["services"].items():
        command_lines = _argv_and_checks(service)
        leaked = [secret for secret, value in secret_values.items() if value in " ".join(command_lines)]
        leaked += _expanded_secrets(command_lines, service.get("environment", {}), secret_values)
        assert not leaked, f"{name} has {leaked} on a command line: {command_lines}"
    # The scripts the services run keep them off command lines too.
    init_commands = [line for line in (REPO_ROOT / "deploy" / "init.sh").read_text().splitlines() if "#" not in line]
    # (`: "${VAR:?}"` is a shell builtin: no process, nothing for `ps` to show.)
    passed_on = [line for line in init_commands if "--password" in line or re.search(r"\$\{?\w*PASSWORD\}", line)]
    assert not passed_on


def test_a_secret_expanded_into_a_programs_arguments_is_caught() -> None:
    env = {"AIRFLOW__CELERY__FLOWER_BASIC_AUTH": "flower:s3cret-value"}
    secret = {"FLOWER_PASSWORD": "s3cret-value"}
    before = ["CMD-SHELL", 'curl --fail -u "$${AIRFLOW__CELERY__FLOWER_BASIC_AUTH}" http://localhost/x']
    assert _expanded_secrets(before, env, secret)
    after = ["CMD-SHELL", 'printf "%s" "$${AIRFLOW__CELERY__FLOWER_BASIC_AUTH}" | curl -K - http://x']
    assert not _expanded_secrets(after, env, secret)


def test_mlflow_is_authenticated_and_published_only_on_request(
    rendered: tuple[dict[str, Any], dict[str, str]], tmp_path: Path
) -> None:
    config, values = rendered
    mlflow = config["services"]["mlflow"]
    assert "ports" not in mlflow
    assert mlflow["entrypoint"][1].endswith("deploy/mlflow_server.py")  # starts `mlflow server --app-name basic-auth`
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert "auth" in (REPO_ROOT / "requirements-mlflow.in").read_text()  # mlflow[auth]: Flask-WTF for the auth app

    env_file, _ = _env_file(tmp_path)
    published = compose_config(env_file, MLFLOW_PORT_OVERRIDE)
    assert published.returncode == 0, published.stderr
    ports = yaml.safe_load(published.stdout)["services"]["mlflow"]["ports"]
    assert [(port["published"], port["target"]) for port in ports] == [(5000, 5000)]


def test_redis_requires_its_password(rendered: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, values = rendered
    redis = config["services"]["redis"]
    assert redis["environment"]["REDISCLI_AUTH"] == values["REDIS_PASSWORD"]
    assert "requirepass" in " ".join(redis["entrypoint"]) and "redis.conf" in " ".join(redis["entrypoint"])
    assert "PONG" in " ".join(redis["healthcheck"]["test"])  # NOAUTH also exits 0
    for name in AIRFLOW_WORKERS:
        broker = config["services"][name]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
        assert broker.startswith(f"redis://:{values['REDIS_PASSWORD']}@redis:6379/"), broker


def test_each_service_gets_the_settings_it_needs_and_no_other_secret(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    services = rendered[0]["services"]
    for name in MLFLOW_USERS:
        env = services[name]["environment"]
        assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true", name
        if name != "mlflow":
            assert (env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], env["MLFLOW_HTTP_REQUEST_TIMEOUT"]) == ("2", "20"), name
            assert env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1", name
    for name, service in services.items():
        has = {secret for secret in PIPELINE_SECRETS if secret in service.get("environment", {})}
        if name in (*AIRFLOW_WORKERS, "model-server"):
            assert has == set(PIPELINE_SECRETS), name
        elif name == "mlflow":  # creates the service account
            assert has == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        else:
            assert not has, (name, has)


def test_airflow_containers_share_their_keys_and_none_runs_as_root(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, values = rendered
    airflow = {name: s for name, s in config["services"].items() if name.startswith("airflow-") or name == "flower"}
    for name, service in airflow.items():
        env = service["environment"]
        assert not service["user"].startswith("0"), name
        assert env["AIRFLOW__API__SECRET_KEY"] == values["AIRFLOW_API_SECRET_KEY"], name
        assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "60", name
        assert env["ML_PIPELINE_MAX_ACTIVE_RUNS"] == "1", name
        celery = json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])
        assert celery == {"worker_max_tasks_per_child": 100, "worker_max_memory_per_child": 2097152}, name


def test_the_model_server_is_unhealthy_without_a_model(rendered: tuple[dict[str, Any], dict[str, str]]) -> None:
    test = rendered[0]["services"]["model-server"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "curl", "--fail"] and test[-1].endswith("/health")
    assert "503" not in json.dumps(test)


def test_mail_goes_to_mailpit_whose_ui_needs_the_env_credentials(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, values = rendered
    services = config["services"]
    assert "mailcatcher" not in services
    mailpit = services["mailpit"]
    assert mailpit["image"].startswith("axllent/mailpit:")
    assert mailpit["environment"]["MP_UI_AUTH"] == f"mail:{values['MAILPIT_UI_PASSWORD']}"
    assert mailpit["environment"]["MP_SMTP_BIND_ADDR"].endswith(":1025")
    assert [(port["published"], port["target"]) for port in _ports(mailpit)] == [(8025, 8025)]  # the UI, not SMTP
    for name in AIRFLOW_WORKERS:
        assert services[name]["environment"]["AIRFLOW_CONN_SMTP_DEFAULT"].startswith("smtp://mailpit:1025?")


def _ports(service: dict[str, Any]) -> list[dict[str, int]]:
    """Published ports as {published, target}, whichever form docker-compose renders them in."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            published, target = port.split(":")[-2:]
            port = {"published": published, "target": target}
        ports.append({"published": int(port["published"]), "target": int(port["target"])})
    return ports


def test_the_prediction_log_is_one_database_for_the_model_server_and_the_monitoring_tasks(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, values = rendered
    services = config["services"]
    url = services["model-server"]["environment"]["MLPIPELINE_PREDICTION_LOG_URL"]
    assert url == "postgresql+psycopg2://prediction_log@postgres:5432/prediction_log"  # no secret in the URL
    for name, service in services.items():
        env = service.get("environment", {})
        if name.startswith("airflow-") or name == "flower":
            assert env["AIRFLOW_VAR_PREDICTION_LOG_URL"] == url, name
            assert env["AIRFLOW_VAR_AIRFLOW_UI_URL"] == "http://localhost:8080", name
            assert env["AIRFLOW_VAR_MLFLOW_UI_URL"] == "http://localhost:5000", name
        # Its password reaches exactly the processes that open it (libpq reads PGPASSWORD).
        if name in (*AIRFLOW_WORKERS, "model-server"):
            assert env["PGPASSWORD"] == values["PREDICTION_LOG_DB_PASSWORD"], name
        else:
            assert "PGPASSWORD" not in env, name
    postgres = services["postgres"]
    assert postgres["environment"]["PREDICTION_LOG_DB_NAME"] == "prediction_log"
    assert any("postgres-init.sh" in volume for volume in map(str, postgres["volumes"]))
    assert "postgres" in services["model-server"]["depends_on"]


def _psql(pg: Any, database: str, user: str, statement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            user,
            "-d",
            database,
            "-c",
            statement,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": pg.password},
        check=False,
    )


def test_postgres_init_creates_the_databases_and_the_roles_on_a_real_postgresql() -> None:
    """deploy/postgres-init.sh as the postgres image runs it: MLflow's database, the prediction log's database owned
    by its writer role, and Grafana's role that reads the writer's tables and writes nothing."""
    if shutil.which("psql") is None:
        pytest.fail("psql is not installed; install it (as root) with: apt-get install -y postgresql-client")
    suffix = secrets.token_hex(4)
    names = {
        "MLFLOW_DB_NAME": f"mlp_test_{suffix}_mlflow",
        "PREDICTION_LOG_DB_NAME": f"mlp_test_{suffix}_prediction_log",
        "PREDICTION_LOG_DB_USER": f"mlp_test_{suffix}_writer",
        "PREDICTION_LOG_READER_USER": f"mlp_test_{suffix}_reader",
    }
    writer, reader = names["PREDICTION_LOG_DB_USER"], names["PREDICTION_LOG_READER_USER"]
    log_db = names["PREDICTION_LOG_DB_NAME"]
    with services.postgres_server() as pg:
        env = {
            "PATH": "/usr/bin:/bin",
            "PGHOST": pg.host,
            "PGPORT": str(pg.port),
            "PGPASSWORD": pg.password,
            "POSTGRES_USER": pg.user,
            "POSTGRES_DB": "postgres",
            "PREDICTION_LOG_DB_PASSWORD": secrets.token_urlsafe(16),
            "PREDICTION_LOG_READER_PASSWORD": "it's-quoted",  # a quote must not break (or inject into) the SQL
            **names,
        }
        try:
            init = subprocess.run(
                ["bash", str(REPO_ROOT / "deploy" / "postgres-init.sh")],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                check=False,
            )
            assert init.returncode == 0, init.stderr
            created = _psql(pg, log_db, writer, "CREATE TABLE checks (verdict text); INSERT INTO checks VALUES ('ok')")
            assert created.returncode == 0, created.stderr
            assert _psql(pg, log_db, reader, "SELECT verdict FROM checks").stdout.count("ok") == 1
            refused = _psql(pg, log_db, reader, "INSERT INTO checks VALUES ('tampered')")
            assert refused.returncode != 0 and "permission denied" in refused.stderr
            assert _psql(pg, names["MLFLOW_DB_NAME"], pg.user, "SELECT 1").returncode == 0
            # Without the variable it names, the script refuses to start.
            missing = subprocess.run(
                ["bash", str(REPO_ROOT / "deploy" / "postgres-init.sh")],
                capture_output=True,
                text=True,
                timeout=60,
                env={key: value for key, value in env.items() if key != "PREDICTION_LOG_READER_PASSWORD"},
                check=False,
            )
            assert missing.returncode != 0 and "PREDICTION_LOG_READER_PASSWORD" in missing.stderr
        finally:
            for database in (names["MLFLOW_DB_NAME"], log_db):
                _psql(pg, "postgres", pg.user, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in (writer, reader):
                _psql(pg, "postgres", pg.user, f'DROP ROLE IF EXISTS "{role}"')
