"""`make demo`'s script, exactly as a user runs it: Airflow's scheduler + LocalExecutor on SQLite, one state
directory for the module's runs (as a user's .demo/ is)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlpipeline.dev.localstack import REPO_ROOT, Ports

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ports]:
    return tmp_path_factory.mktemp("demo"), Ports.free()


def _demo(
    tmp_path: Path, ports: Ports, conf: str = "", extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
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
        **(extra or {}),
    }
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _line(out: str, label: str) -> str:
    """The value of the summary line that starts with ``label``."""
    return next(line for line in out.splitlines() if line.startswith(label))[len(label) :].strip()


# Three whole demos, the first with its live traffic, monitoring run and the retrain run it asks for.
@pytest.mark.timeout(2400)
def test_demo_deploys_then_skips_unchanged_data_then_compares_with_the_champion(
    demo_state: tuple[Path, Ports],
) -> None:
    tmp_path, ports = demo_state
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
    # After the deploy: live traffic with a drifted slice and feedback, then one model_monitoring run's verdict.
    assert "live traffic      : 600 rows in 30 requests (model v1), 600 logged, drifted: 300 drifted on " in out
    assert "live monitoring   : model_monitoring run manual__" in out
    assert "verdict degraded (v1, " in out, "the drifted slice and the wrong outcomes are noticed"
    assert "email sent        : '[model_monitoring] churn_classifier v1 degraded: " in out, "the alert email"
    report = Path(_line(out, "  report            :"))
    assert report.parent.parent == tmp_path / "data" / "runs" and report.name == "report.html" and report.is_file()
    assert _line(out, "  emails (.eml)     :") == str(tmp_path / "demo" / "mail")
    assert list((tmp_path / "demo" / "mail").glob("*.eml"))
    assert list((tmp_path / "data" / "monitoring").glob("manual__*.json"))
    # The degraded verdict's retrain request (an asset event) made the scheduler start an ml_pipeline run.
    assert _line(out, "  retrain requested :").startswith("ml_pipeline run asset_triggered__")

    second = _demo(tmp_path, ports)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    out = second.stdout
    assert "branch taken      : report_unchanged" in out, "the same data and settings train nothing"
    assert "unchanged=True" in out, "the unchanged source is detected"
    assert "serving           : churn_classifier v1" in out and "(model v1)" in out
    assert "live traffic" not in out, "nothing deployed: no traffic, no monitoring run"
    assert Path(_line(out, "  report            :")).is_file()
    assert "stopping the processes this demo started" in out

    third = _demo(tmp_path, ports, conf='{"random_state": 7}')  # a run may change how a model is trained
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-4000:]
    assert "champion v1" in third.stdout, "a run that trains is compared with the first run's champion"


@pytest.mark.timeout(1200)
def test_your_own_data_through_airflow_variables_in_the_environment(demo_state: tuple[Path, Ports]) -> None:
    """The README's "bring your own dataset": a URL and a target, nothing else. The data is the raw penguins file
    (multiclass, messy) from the demo's own data source, the state the churn runs above left (their champion has
    other columns: it cannot be scored on these rows, the threshold alone decides)."""
    tmp_path, ports = demo_state
    variables = {
        "AIRFLOW_VAR_CRAWL_URL": f"http://127.0.0.1:{ports.datasource}/datasets/penguins.csv",
        "AIRFLOW_VAR_DATASET_SCHEMA": '{"target": "Species"}',
    }
    run = _demo(tmp_path, ports, extra=variables)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = run.stdout
    assert "Variables from the environment (AIRFLOW_VAR_*): crawl_url, dataset_schema" in out
    assert "branch taken      : deploy_model" in out
    assert "dataset           : http://127.0.0.1:" in out and "/datasets/penguins.csv" in out
    assert "task multiclass, target 'Species'" in out
    prediction = out.split("one prediction    : POST /predict ", 1)[1].split("\n", 2)
    columns = ("Island", "Culmen Length (mm)", "Flipper Length (mm)", "Body Mass (g)", "Clutch Completion")
    assert any(f'"{column}":' in prediction[0] for column in columns), "a penguins row, with its own columns"
    assert "Penguin (Pygoscelis" in prediction[1], "the answer is a species, with a probability per species"
