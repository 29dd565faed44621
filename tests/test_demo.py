"""`make demo`'s script, twice, exactly as a user runs it: Airflow's scheduler + LocalExecutor on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlpipeline.dev.localstack import REPO_ROOT, Ports

pytestmark = pytest.mark.airflow


def _demo(tmp_path: Path, ports: Ports, conf: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DEMO_CONF": conf,
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_DATA_DIR": str(tmp_path / "data"),
        "DEMO_AIRFLOW_PORT": str(ports.airflow_api),
        "DEMO_SERVING_PORT": str(ports.serving),
        "DEMO_DATASOURCE_PORT": str(ports.datasource),
        "DEMO_SMTP_PORT": str(ports.smtp),
        "DEMO_TIMEOUT": "600",
    }
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_demo_deploys_then_skips_unchanged_data_then_compares_with_the_champion(tmp_path: Path) -> None:
    ports = Ports.free()
    first = _demo(tmp_path, ports)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    out = first.stdout
    assert "branch taken      : deploy_model" in out
    assert "no champion yet: the threshold alone decides" in out
    assert "serving           : churn_classifier v1" in out
    assert "(model v1)" in out, "one prediction answered by the endpoint"
    assert "email sent        : '[ml_pipeline] deployed churn_classifier v1" in out
    assert list((tmp_path / "data" / "raw").glob("*/manifest.json"))
    assert list((tmp_path / "data" / "processed").glob("*/features.parquet"))

    second = _demo(tmp_path, ports)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    out = second.stdout
    assert "branch taken      : report_unchanged" in out, "the same data and settings train nothing"
    assert "unchanged=True" in out, "the unchanged source is detected"
    assert "serving           : churn_classifier v1" in out and "(model v1)" in out
    assert "stopping the processes this demo started" in out

    third = _demo(tmp_path, ports, conf='{"random_state": 7}')  # a run may change how a model is trained
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-4000:]
    assert "champion v1" in third.stdout, "a run that trains is compared with the first run's champion"
