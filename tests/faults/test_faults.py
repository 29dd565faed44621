"""Faults injected into the running production stack (docker-compose.yaml as processes, real PostgreSQL, a Redis
of our own): each run ends in a defined state, the champion is a smoke-tested version the server serves, the
server keeps answering, nothing is registered twice and nothing is left behind.

Outcomes are appended as JSON lines to $FAULTS_RESULTS when set (docs/reliability.md's table comes from them).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import psutil
import pytest

from tests.faults.harness import (
    FaultStack,
    Prober,
    assert_sound,
    failure_emails,
    fault_stack,
    kill_service_hard,
    predict_rows,
    task_instance,
    task_process,
    terminate_airflow_connections,
    tries,
    trigger,
    wait_for_runs,
    wait_for_task_state,
)

pytestmark = [pytest.mark.faults, pytest.mark.airflow]
TRAINING_WORKER = "airflow-worker-training"
DEFAULT_WORKER = "airflow-worker"


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with fault_stack(tmp_path_factory.mktemp("faultstack")) as running:
        username, password = running.stack.mlflow_auth
        credentials = {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
        with mock.patch.dict(os.environ, credentials):
            baseline = trigger(running, seed=0)  # a champion to protect
            assert wait_for_runs(running, [baseline]) == {baseline: "success"}
            running.rows = predict_rows(running)
            yield running


def _record(fault: str, faults: FaultStack, run_ids: list[str], states: dict[str, str], prober: Prober, **extra):
    outcome = {
        "fault": fault,
        "states": list(states.values()),
        "tries": [tries(faults, run_id) for run_id in run_ids],
        "alias": assert_sound(faults),
        "failed_predict": prober.failed,
        "ok_predict": prober.ok,
        **extra,
    }
    print(json.dumps(outcome))
    if os.environ.get("FAULTS_RESULTS"):
        with open(os.environ["FAULTS_RESULTS"], "a", encoding="utf-8") as results:
            results.write(json.dumps(outcome) + "\n")
    return outcome


def _kill_task_process(faults: FaultStack, seed: int, worker: str, task_id: str) -> None:
    run_id = trigger(faults, seed)
    ti = wait_for_task_state(faults, run_id, task_id, {"running"})
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        process = task_process(faults, worker, ti["id"])
        assert process.ppid() != faults.stack.processes[worker].popen.pid  # the task, not the worker
        process.send_signal(signal.SIGKILL)  # raises NoSuchProcess if the task ended first: no fault injected
        states = wait_for_runs(faults, [run_id])
    assert states == {run_id: "success"}
    assert tries(faults, run_id)[task_id] >= 2
    assert prober.failed == 0, prober.errors[:5]
    assert not failure_emails(faults, run_id)
    _record(f"kill -9 {task_id} task process", faults, [run_id], states, prober)


def test_task_process_killed_mid_training_is_retried(faults: FaultStack) -> None:
    _kill_task_process(faults, 101, TRAINING_WORKER, "train_model")


def test_task_process_killed_mid_etl_is_retried(faults: FaultStack) -> None:
    _kill_task_process(faults, 102, DEFAULT_WORKER, "etl")


def test_training_worker_killed_mid_task_is_restarted_and_the_task_retried(faults: FaultStack) -> None:
    run_id = trigger(faults, 103)
    ti = wait_for_task_state(faults, run_id, "train_model", {"running"})
    restarts_before = faults.stack.supervisor.restarts(TRAINING_WORKER)
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        task_process(faults, TRAINING_WORKER, ti["id"])  # the task is really under way
        killed_at = time.monotonic()
        kill_service_hard(faults, TRAINING_WORKER)
        noticed = _wait_until_not_running(faults, run_id, "train_model", int(ti["try_number"]))
        detection_seconds = round(noticed - killed_at, 1)
        states = wait_for_runs(faults, [run_id])
    assert faults.stack.supervisor.restarts(TRAINING_WORKER) > restarts_before
    assert detection_seconds <= 60 + 30, detection_seconds  # compose's 60 s heartbeat timeout + the check interval
    assert states == {run_id: "success"}
    assert tries(faults, run_id)["train_model"] >= 2
    assert prober.failed == 0, prober.errors[:5]
    assert not failure_emails(faults, run_id)  # the timed-out try was retried: no false alarm
    _record("kill -9 training worker", faults, [run_id], states, prober, detection_seconds=detection_seconds)


def _wait_until_not_running(faults: FaultStack, run_id: str, task_id: str, try_number: int) -> float:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ti = task_instance(faults, run_id, task_id)
        if ti["state"] != "running" or int(ti["try_number"]) != try_number:
            return time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"{task_id} still running {try_number} five minutes after its worker died")


def test_redis_restarted_mid_run(faults: FaultStack) -> None:
    run_id = trigger(faults, 104)
    wait_for_task_state(faults, run_id, "train_model", {"running"})
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        with faults.redis.down(seconds=1):
            pass
        states = wait_for_runs(faults, [run_id])
    assert states == {run_id: "success"}
    assert prober.failed == 0, prober.errors[:5]
    _record("Redis restarted mid-run", faults, [run_id], states, prober)


def test_redis_down_at_trigger_time(faults: FaultStack) -> None:
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        with faults.redis.down(seconds=5):
            run_id = trigger(faults, 105)
        states = wait_for_runs(faults, [run_id])
    assert states == {run_id: "success"}
    assert prober.failed == 0, prober.errors[:5]
    _record("Redis down 5 s at trigger time", faults, [run_id], states, prober)


def _stop_during_deploy(faults: FaultStack, seed: int, service: str, seconds: float) -> tuple[str, dict, Prober]:
    run_id = trigger(faults, seed)
    wait_for_task_state(faults, run_id, "deploy_model", {"running"})
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        with faults.stack.service_stopped(service):
            time.sleep(seconds)
        states = wait_for_runs(faults, [run_id])
    # A defined end: success (after a retry), or failed with an alert email.
    assert states[run_id] == "success" or failure_emails(faults, run_id), states
    return run_id, states, prober


def test_mlflow_stopped_during_deploy(faults: FaultStack) -> None:
    run_id, states, prober = _stop_during_deploy(faults, 106, "mlflow", 20)
    assert prober.failed == 0, prober.errors[:5]  # the server keeps serving what it loaded
    _record("MLflow stopped 20 s during deploy", faults, [run_id], states, prober)


def test_model_server_stopped_during_deploy(faults: FaultStack) -> None:
    run_id, states, prober = _stop_during_deploy(faults, 107, "model-server", 10)
    assert prober.failed > 0  # the fault happened: the server itself was down
    _record("model server stopped 10 s during deploy", faults, [run_id], states, prober)


def test_airflow_database_connections_terminated_mid_run(faults: FaultStack) -> None:
    run_id = trigger(faults, 108)
    wait_for_task_state(faults, run_id, "train_model", {"running"})
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        terminated = terminate_airflow_connections(faults)
        time.sleep(3)
        terminated += terminate_airflow_connections(faults)
        states = wait_for_runs(faults, [run_id])
    assert terminated > 0
    assert states == {run_id: "success"}
    assert prober.failed == 0, prober.errors[:5]
    _record("Airflow DB connections terminated", faults, [run_id], states, prober, terminated=terminated)


def test_three_concurrent_runs_deploying(faults: FaultStack) -> None:
    with Prober(faults.stack.serving_url, faults.rows) as prober:
        run_ids = [trigger(faults, seed) for seed in (109, 110, 111)]
        states = wait_for_runs(faults, run_ids, timeout=1200)
    for run_id, state in states.items():
        assert state == "success" or failure_emails(faults, run_id), (run_id, state)
    assert prober.failed == 0, prober.errors[:5]
    _record("three concurrent runs deploying", faults, run_ids, states, prober)


def test_no_process_of_the_stack_was_left_orphaned(faults: FaultStack) -> None:
    # Every service the faults killed or stopped is running again, once.
    for name, process in faults.stack.processes.items():
        assert process.alive(), name
        assert psutil.Process(process.popen.pid).status() != psutil.STATUS_ZOMBIE, name
    assert Path(faults.stack.root / "logs").is_dir()
