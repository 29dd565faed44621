"""``python -m mlpipeline.dev.stack up`` reads its settings like compose does: no services are started here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlpipeline.dev.localstack import StackError, stored_secrets
from mlpipeline.dev.stack import COMPOSE_FILE, SERVICE_PORTS, main, stack_from_environment


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
