"""``python -m mlpipeline.dev.stack up`` reads its settings like compose does: no services are started here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mlpipeline.dev.compose import render_prometheus_config
from mlpipeline.dev.localstack import StackError, stored_secrets
from mlpipeline.dev.stack import (
    COMPOSE_FILE,
    COMPOSE_ONLY_SERVICES,
    SERVICE_PORTS,
    Postgres,
    local_argv,
    main,
    stack_from_environment,
)


def test_service_ports_are_compose_defaults() -> None:
    # Port variables of the external services are the given PostgreSQL's and Redis's, not the stack's.
    defaults = {
        name: int(port)
        for name, port in re.findall(r"\$\{([A-Z_]+_PORT):-(\d+)\}", COMPOSE_FILE.read_text(encoding="utf-8"))
        if name not in ("POSTGRES_PORT", "REDIS_PORT")
    }
    assert defaults == SERVICE_PORTS


def test_defaults_without_environment(tmp_path: Path) -> None:
    stack = stack_from_environment(tmp_path / "stack", {})
    assert stack.root == (tmp_path / "stack").resolve() and stack.root.is_dir()
    assert (stack.postgres.host, stack.postgres.port, stack.postgres.user) == ("127.0.0.1", 5432, "postgres")
    assert stack.postgres.password == "unused-with-trust-auth"
    assert (stack.postgres.airflow_db, stack.postgres.mlflow_db) == ("airflow", "mlflow")
    assert (stack.redis.host, stack.redis.port, stack.redis.db, stack.redis.password) == ("127.0.0.1", 6379, 0, "")
    assert stack.ports == SERVICE_PORTS
    assert stack.api_url == "http://127.0.0.1:8080"


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "POSTGRES_HOST": "db",
        "POSTGRES_PORT": "6543",
        "POSTGRES_PASSWORD": "",  # empty counts as unset, as with compose's ${VAR:-default}
        "AIRFLOW_DB_NAME": "af",
        "REDIS_DB": "3",
        "REDIS_PASSWORD": "redis-secret",
        "MLFLOW_PORT": "5999",
    }
    stack = stack_from_environment(tmp_path, env)
    assert (stack.postgres.host, stack.postgres.port, stack.postgres.airflow_db) == ("db", 6543, "af")
    assert stack.postgres.password == "unused-with-trust-auth"
    assert (stack.redis.db, stack.redis.password) == (3, "redis-secret")
    assert stack.variables()["REDIS_PASSWORD"] == "redis-secret"
    assert stack.ports == {**SERVICE_PORTS, "MLFLOW_PORT": 5999}
    assert stack.mlflow_url == "http://127.0.0.1:5999"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["down"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_redis_without_password_is_refused_naming_the_variable(tmp_path: Path) -> None:
    stack = stack_from_environment(tmp_path, {})
    with pytest.raises(StackError, match="REDIS_PASSWORD"):
        stack.services()


def test_stored_secrets_keep_old_values_and_add_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    first = stored_secrets(path, lambda: {"jwt_secret": "first"})
    assert first == {"jwt_secret": "first"} and oct(path.stat().st_mode & 0o777) == "0o600"
    # A later version of the stack needs one more secret: it is added, the existing one is kept.
    second = stored_secrets(path, lambda: {"jwt_secret": "regenerated", "serving_token": "new"})
    assert second == {"jwt_secret": "first", "serving_token": "new"}
    assert stored_secrets(path, lambda: {"jwt_secret": "x", "serving_token": "y"}) == second


def test_the_prediction_log_database_is_named_like_compose_names_it(tmp_path: Path) -> None:
    stack = stack_from_environment(tmp_path, {"REDIS_PASSWORD": "r"})
    assert stack.postgres.prediction_log_database == "prediction_log"
    renamed = stack_from_environment(tmp_path, {"REDIS_PASSWORD": "r", "PREDICTION_LOG_DB_NAME": "plog"})
    assert renamed.prediction_log_url == "postgresql+psycopg2://postgres@127.0.0.1:5432/plog"
    # Built directly (the tests' stacks), it is unique per stack like the Airflow database it is named after.
    assert Postgres("h", 1, "u", "p", "mlp_test_ab_airflow", "m").prediction_log_database == (
        "mlp_test_ab_airflow_prediction_log"
    )
    variables = renamed.variables()
    assert variables["MLFLOW_PUBLIC_URL"] == renamed.mlflow_url and variables["AIRFLOW_PUBLIC_URL"] == renamed.api_url


def test_mailpit_runs_as_the_mail_catcher_and_grafana_not_at_all(tmp_path: Path) -> None:
    stack = stack_from_environment(tmp_path, {"REDIS_PASSWORD": "r", "SMTP_PORT": "2525"})
    specs = stack.services()
    assert "grafana" not in specs and COMPOSE_ONLY_SERVICES["grafana"] is None
    mailpit = specs["mailpit"]
    assert mailpit.argv[:3] == ["python", "-m", "mlpipeline.dev.mailcatcher"]
    assert mailpit.argv[3:] == ["--host", "127.0.0.1", "--port", "2525", "--dir", str(stack.mail_dir)]
    assert mailpit.restart == "always"


def test_prometheus_scrapes_the_local_ports(tmp_path: Path) -> None:
    stack = stack_from_environment(tmp_path, {"REDIS_PASSWORD": "r", "MODEL_SERVER_PORT": "18000"})
    config = yaml.safe_load(stack.render_prometheus_config().read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"model-server": ["127.0.0.1:18000"], "flower": ["127.0.0.1:5555"]}
    assert str(stack.render_prometheus_config()) == stack.services()["prometheus"].argv[1].split("=", 1)[1]


def test_a_prometheus_target_the_stack_does_not_know_is_refused() -> None:
    unknown = "scrape_configs:\n- job_name: x\n  static_configs:\n  - targets: ['somewhere:9100']\n"
    with pytest.raises(StackError, match="somewhere:9100"):
        render_prometheus_config(unknown, SERVICE_PORTS, SERVICE_PORTS, "127.0.0.1")
    moved = "scrape_configs:\n- job_name: x\n  static_configs:\n  - targets: ['model-server:8001']\n"
    with pytest.raises(StackError, match="model-server's port 8000"):
        render_prometheus_config(moved, SERVICE_PORTS, SERVICE_PORTS, "127.0.0.1")


def test_a_missing_prometheus_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_from_environment(tmp_path, {"REDIS_PASSWORD": "r"})
    spec = stack.services()["prometheus"]
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without prometheus
    with pytest.raises(StackError, match="apt-get install -y prometheus"):
        local_argv(spec)


def test_the_callers_libpq_settings_do_not_reach_the_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_from_environment(tmp_path, {"REDIS_PASSWORD": "r"})
    monkeypatch.setenv("PGPASSWORD", "the caller's")
    monkeypatch.setenv("PGHOST", "elsewhere")
    specs = stack.services()
    model_server = stack._process_env(specs["model-server"])
    assert model_server["PGPASSWORD"] == stack.postgres.password and "PGHOST" not in model_server
    assert "PGPASSWORD" not in stack._process_env(specs["datasource"])
