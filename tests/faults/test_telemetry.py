"""MLflow's telemetry is off in every process that runs MLflow, so the ``KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'``
seen in deploys (its thread, unable to reach the internet, deletes that variable while HTTP requests read the
environment) cannot recur.

Proved twice: every environment we start MLflow users with (compose, the process stack, the embedded stack)
carries both switches, and a process started with such an environment, without network, runs ten rounds of the
deploy path's registry calls with no telemetry client and no telemetry thread. The control (the same environment
without the switches) must start the telemetry client, or the check proves nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlpipeline.dev.localstack import LocalStack
from mlpipeline.dev.stack import Postgres, ProcessStack, Redis, load_compose
from tests.dev.test_compose import MLFLOW_USERS  # the services that run MLflow code: one list

pytestmark = pytest.mark.faults
NOTHING = {"client": False, "threads": [], "session_id_set": False}
SWITCHES = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# MLflow also counts these as "do not track": the probe runs without them, as a production container would.
CI_MARKERS = (
    *("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "TF_BUILD"),
    *("BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION"),
    *("RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID"),
)

# The deploy path's registry calls (register, tag, move the alias, read it back), ten times, against a local
# registry; then what telemetry left running. Proxies point at a closed port: no network.
PROBE = r"""
import json, os, sys, threading, mlflow
from mlflow import MlflowClient
from mlflow.telemetry.client import get_telemetry_client

def telemetry_threads():
    return sorted(t.name for t in threading.enumerate() if "elemetry" in t.name)

# Right after import: its config thread, failing offline, later drops the client and the session id itself.
at_import = {"client": get_telemetry_client() is not None, "threads": telemetry_threads(),
             "session_id_set": "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ}
root = sys.argv[1]
mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
client = MlflowClient()
experiment = client.create_experiment("telemetry-probe", artifact_location=f"{root}/artifacts")
client.create_registered_model("probe")
for round in range(10):
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "accuracy", 0.5 + round / 100)
    version = client.create_model_version("probe", f"{root}/artifacts/{round}", run.info.run_id)
    client.set_model_version_tag("probe", version.version, "deploy_status", "deploying")
    client.set_registered_model_alias("probe", "champion", version.version)
    assert client.get_model_version_by_alias("probe", "champion").version == version.version
    client.set_model_version_tag("probe", version.version, "deploy_status", "deployed")
    client.set_terminated(run.info.run_id)
after = {"client": get_telemetry_client() is not None, "threads": telemetry_threads(),
         "session_id_set": "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ}
print(json.dumps({"at_import": at_import, "after": after}))
"""


def _probe(env: dict[str, str], tmp_path: Path) -> dict:
    offline = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    clean = {k: v for k, v in env.items() if k not in CI_MARKERS and not k.startswith("MLFLOW_TRACKING")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        env={**clean, **offline},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _process_stack(tmp_path: Path) -> ProcessStack:
    return ProcessStack(
        root=tmp_path / "stack",
        postgres=Postgres("127.0.0.1", 5432, "u", "p", "airflow", "mlflow"),
        redis=Redis("127.0.0.1", 6379, 0, "r"),
    )


def test_compose_and_both_local_stacks_switch_telemetry_off_for_every_mlflow_user(tmp_path: Path) -> None:
    compose = load_compose()["services"]
    stack = _process_stack(tmp_path)
    specs = stack.services()
    for name in MLFLOW_USERS:
        environment = {k: str(v) for k, v in compose[name].get("environment", {}).items()}
        assert SWITCHES.items() <= environment.items(), f"compose: {name}"
        assert SWITCHES.items() <= stack._process_env(specs[name]).items(), f"process stack: {name}"
    embedded = LocalStack(tmp_path / "embedded").env()
    assert SWITCHES.items() <= embedded.items(), "embedded stack"


def test_no_telemetry_thread_in_a_process_started_with_our_environment(tmp_path: Path) -> None:
    stack = _process_stack(tmp_path)
    specs = stack.services()
    for name in ("model-server", "airflow-worker-training"):
        (tmp_path / name).mkdir()
        outcome = _probe(stack._process_env(specs[name]), tmp_path / name)
        assert outcome == {"at_import": NOTHING, "after": NOTHING}, name
    (tmp_path / "embedded").mkdir()
    embedded_env = LocalStack(tmp_path / "embedded-root").env()
    assert _probe(embedded_env, tmp_path / "embedded") == {"at_import": NOTHING, "after": NOTHING}


def test_control_without_the_switches_telemetry_would_run(tmp_path: Path) -> None:
    stack = _process_stack(tmp_path)
    env = {k: v for k, v in stack._process_env(stack.services()["model-server"]).items() if k not in SWITCHES}
    outcome = _probe(env, tmp_path)
    assert outcome["at_import"]["client"] and outcome["at_import"]["session_id_set"], outcome
