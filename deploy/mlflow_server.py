"""Entrypoint of the ``mlflow`` service: the tracking server behind MLflow's basic-auth app, and its service account.

    python deploy/mlflow_server.py [mlflow server options]    # e.g. --host 0.0.0.0 --port 5000 --serve-artifacts

Runs in the MLflow server's own environment (deploy/mlflow.Dockerfile, .venv-mlflow); standard library only, so it
needs nothing of the project installed. Every secret comes from the environment, never from the command line:

* ``MLFLOW_BACKEND_STORE_URI``: the tracking store (``mlflow server`` reads it itself).
* ``MLFLOW_AUTH_CONFIG_PATH``: where the auth app's ini is written at each start (mode 600); its database is
  ``MLFLOW_AUTH_DATABASE_URI``, by default the tracking store's database (the auth tables have their own
  migration history, ``alembic_version_auth``).
* ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``: the admin, created by MLflow on the first start.
* ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``: the service account the workers and the model server
  use. Created once the server answers, and its password set from the environment on every start (rotation).
* ``MLFLOW_FLASK_SERVER_SECRET_KEY``: signs the auth app's CSRF tokens; the same for every worker.

Every other authenticated user gets no permission by default (``NO_PERMISSIONS``); anonymous requests get 401.

The service account is an MLflow admin. The pipeline manages the whole registry (experiments, runs, models,
versions, aliases, retention), and it must be told that a model or alias does not exist yet (404): the auth app
answers any non-admin 403 for a registry object that does not exist, even with MANAGE on every model, which would
read as a failure on the very first run. Workers hold PostgreSQL credentials that reach MLflow's database anyway.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 180


def write_auth_config(path: Path, database_uri: str) -> None:
    """The auth app's settings. The admin's credentials stay in the environment, which MLflow reads first."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": database_uri,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 600 before anything is written: the database URI carries its password.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        config.write(handle)
    path.chmod(0o600)


def _option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


class MlflowAdmin:
    """Just enough of the auth app's REST API, as its admin."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Mapping[str, object] | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def ensure_user(self, username: str, password: str) -> None:
        status, _ = self.call("GET", f"/api/2.0/mlflow/users/get?username={username}")
        if status == 200:
            status, text = self.call("PATCH", "/api/2.0/mlflow/users/update-password", _credentials(username, password))
        else:
            status, text = self.call("POST", "/api/2.0/mlflow/users/create", _credentials(username, password))
        if status != 200:
            raise RuntimeError(f"could not create or update MLflow user {username!r}: {status} {text[:300]}")

    def make_admin(self, username: str) -> None:
        body = {"username": username, "is_admin": True}
        status, text = self.call("PATCH", "/api/2.0/mlflow/users/update-admin", body)
        if status != 200:
            raise RuntimeError(f"could not make MLflow user {username!r} an admin: {status} {text[:300]}")


def _credentials(username: str, password: str) -> dict[str, str]:
    return {"username": username, "password": password}


def wait_until_serving(server: subprocess.Popen[bytes], base_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {server.returncode} while starting")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {base_url}/health within {STARTUP_TIMEOUT_SECONDS} s")


def ensure_service_account(base_url: str, environ: dict[str, str]) -> None:
    admin = MlflowAdmin(base_url, environ["MLFLOW_AUTH_ADMIN_USERNAME"], environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    username = environ["MLFLOW_TRACKING_USERNAME"]
    admin.ensure_user(username, environ["MLFLOW_TRACKING_PASSWORD"])
    admin.make_admin(username)
    print(f"mlflow_server: service account {username!r} ready", flush=True)


def main(argv: list[str]) -> int:
    environ = dict(os.environ)
    missing = [
        name
        for name in (
            "MLFLOW_BACKEND_STORE_URI",
            "MLFLOW_AUTH_CONFIG_PATH",
            "MLFLOW_AUTH_ADMIN_USERNAME",
            "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY",
        )
        if not environ.get(name)
    ]
    if missing:
        print(f"mlflow_server: set {', '.join(missing)}", file=sys.stderr)
        return 2
    database_uri = environ.get("MLFLOW_AUTH_DATABASE_URI") or environ["MLFLOW_BACKEND_STORE_URI"]
    write_auth_config(Path(environ["MLFLOW_AUTH_CONFIG_PATH"]), database_uri)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", *argv])
    # Stopping this process stops the server (compose sends SIGTERM to PID 1, the process stack to the group).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: server.send_signal(received))
    try:
        base_url = f"http://127.0.0.1:{_option(argv, '--port', '5000')}"
        wait_until_serving(server, base_url)
        ensure_service_account(base_url, environ)
    except RuntimeError as error:
        print(f"mlflow_server: {error}", file=sys.stderr, flush=True)
        server.terminate()
        server.wait(30)
        return 1
    return server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
