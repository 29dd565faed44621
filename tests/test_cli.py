"""``python -m mlpipeline schema``: crawl a real file served on 127.0.0.1, print the schema, refuse bad input."""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import mlpipeline
from mlpipeline.__main__ import main
from mlpipeline.config import build_config

PENGUINS = importlib.resources.files("palmerpenguins").joinpath("data", "penguins-raw.csv")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """Base URL of a directory holding penguins-raw.csv (as data.csv) and a text file that is no table."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copyfile(str(PENGUINS), root / "data.csv")
    (root / "notes.txt").write_text("not a table\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_prints_the_schema_for_the_variable_and_the_reasons(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", f"{served}/data.csv", "--target", "Species"]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    schema = build_config({"dataset_schema": out}).dataset_schema  # pasted as the Variable's value
    assert schema.model_dump(mode="json", exclude_defaults=True) == printed
    assert schema.target == "Species"
    assert {c.name: c.type for c in schema.resolved_columns()}["Date Egg"] == "date"
    assert "Culmen Length (mm)" in schema.feature_names
    lines = err.splitlines()
    assert lines[0] == "left out:"
    assert "  Species: the target" in lines
    assert any(line.startswith("  Comments: free text") for line in lines)
    assert any(line.startswith("  Individual ID: id-like") for line in lines)


def test_module_entry_point_with_id_column_and_exclusions(served: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlpipeline",
            "schema",
            f"{served}/data.csv",
            "--target",
            "Sex",
            "--id-column",
            "Individual ID",
            "--exclude",
            "Comments, Delta 15 N (o/oo)",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        # This checkout's src only: sys.path may hold a loaded model's code/ directory, whose partial copy of the
        # mlpipeline package (features.py) would shadow the real one in the child.
        env={**os.environ, "PYTHONPATH": str(Path(mlpipeline.__file__).resolve().parents[1])},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert (printed["target"], printed["id_column"]) == ("Sex", "Individual ID")
    assert printed["exclude"] == ["Comments", "Delta 15 N (o/oo)"]
    names = [column["name"] for column in printed["columns"]]
    assert "Species" in names and "Delta 15 N (o/oo)" not in names and "Individual ID" not in names
    assert "  Individual ID: the id column" in done.stderr.splitlines()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{url}/data.csv", "--target", "Beak"], "the target 'Beak' is not a column of the snapshot"),
        (["ftp://127.0.0.1/data.csv", "--target", "Species"], "crawl_url: must be an http:// or https:// URL"),
        (["{url}/missing.csv", "--target", "Species"], "404"),
        (["{url}/notes.txt", "--target", "Species", "--format", "parquet"], "notes.txt"),
        (["{url}/data.csv", "--target", "Species", "--sample-rows", "0"], "--sample-rows must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    served: str, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["schema", *[a.format(url=served) for a in arguments]]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert message in err


def test_missing_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for arguments in ([], ["schema", "http://127.0.0.1/x.csv"], ["nope"]):
        with pytest.raises(SystemExit) as exited:
            main(arguments)
        assert exited.value.code == 2
    assert "usage: python -m mlpipeline" in capsys.readouterr().err


def test_report_writes_a_runs_html_and_prints_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlpipeline.__main__ import main
    from mlpipeline.config import build_config

    records = tmp_path / "data" / "runs" / "run-1"
    records.mkdir(parents=True)
    config = build_config({"data_dir": "somewhere/else", "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"})
    (records / "config.json").write_text(config.model_dump_json())
    assert main(["report", str(records)]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == records.resolve() / "report.html"
    assert "<html" in written.read_text().lower() and "not available" in written.read_text()

    assert main(["report", str(tmp_path)]) == 2
    assert "not a run's records directory" in capsys.readouterr().err


# --- run, status, report --open: the pipeline in one process on the demo's own data source ---------------------


@pytest.fixture(scope="module")
def churn_source() -> Iterator[str]:
    """The demo data source (synthetic churn, dirty records), small: the pipeline's default dataset."""
    from mlpipeline.dev.datasource import DataSourceServer

    with DataSourceServer(rows=600) as source:
        yield f"{source.url}/api/records"


def _settings(tmp_path: Path, crawl_url: str, **more: object) -> Path:
    path = tmp_path / "settings.json"
    values = {
        "crawl_url": crawl_url,
        "data_dir": str(tmp_path / "data"),
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "mlflow_artifact_location": str(tmp_path / "artifacts"),
        "metric_threshold": 0.5,
        **more,
    }
    path.write_text(json.dumps(values))
    return path


def _champion(settings: Path) -> str | None:
    from mlpipeline.cli.common import cli_config
    from mlpipeline.registry import champion_version, use_tracking

    config = cli_config(str(settings), environ={})
    version = champion_version(use_tracking(config), config)
    return None if version is None else str(version.version)


def _line(out: str, label: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(label)).split(":", 1)[1].strip()


def test_run_refuses_to_deploy_without_a_server_then_resumes_with_no_deploy(
    tmp_path: Path, churn_source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlpipeline.dev.localstack import free_port

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = _settings(tmp_path, churn_source, serving_url=closed)
    assert main(["run", "--config", str(settings), "--run-id", "try-1"]) == 1
    out, err = capsys.readouterr()
    assert "train 00_hist_gradient_boosting done in" in out, "not a terminal: one plain line per stage"
    error = err.splitlines()[-1]  # after MLflow's own log lines
    assert error.startswith(f"error: deploy failed: the model server at {closed} does not answer")
    assert "--no-deploy" in error and "nothing was registered" in error
    assert _champion(settings) is None

    # The same run again, stopping after validation: what it finished is reused, nothing is registered.
    assert main(["run", "--config", str(settings), "--run-id", "try-1", "--no-deploy"]) == 0
    out = capsys.readouterr().out
    assert _line(out, "decision").startswith("PASSED, NOT DEPLOYED (--no-deploy)")
    assert "deploy    skipped: --no-deploy" in out
    report = Path(_line(out, "report"))
    assert report == tmp_path / "data" / "runs" / "try-1" / "report.html" and "<html" in report.read_text().lower()
    assert _champion(settings) is None

    assert main(["status", "--config", str(settings)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("champion : none (churn_classifier@champion is not set")
    assert "  try-1  passed; not deployed  accuracy 0." in out
    assert "live     : no live check yet" in out


def test_run_deploys_monitors_reports_then_finds_nothing_new(
    tmp_path: Path, churn_source: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlpipeline.serving import create_app, serve_in_thread

    settings = _settings(tmp_path, churn_source, metric_threshold=0.99)
    # The environment overrides the file, setting by setting, as AIRFLOW_VAR_<NAME> overrides nothing else.
    monkeypatch.setenv("MLPIPELINE_METRIC_THRESHOLD", "0.5")
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"  # the server logs its traffic; the live check reads it
    monkeypatch.setenv("MLPIPELINE_PREDICTION_LOG_URL", log_url)
    app = create_app(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_name="churn_classifier",
        poll_seconds=0,
        prediction_log_url=log_url,
    )
    with serve_in_thread(app) as url:
        monkeypatch.setenv("MLPIPELINE_SERVING_URL", url)
        assert main(["run", "--config", str(settings), "--run-id", "first"]) == 0
        out = capsys.readouterr().out
        assert _line(out, "decision") == f"DEPLOYED churn_classifier v1 at {url}"
        assert "threshold 0.5000" in out and "no champion yet: the threshold alone decides" in out
        assert "monitor   done in" in out and (tmp_path / "data" / "runs" / "first" / "monitor.json").exists()
        assert Path(_line(out, "report")).is_file()
        assert _champion(settings) == "1"
        served = httpx.get(f"{url}/model", timeout=10).json()
        assert str(served["version"]) == "1"

        assert main(["run", "--config", str(settings), "--run-id", "second"]) == 0
        out = capsys.readouterr().out
        assert _line(out, "decision") == "NOTHING TO DO: nothing trained, nothing registered"
        assert "those champion v1 came from" in out

        # Live traffic (a drifted slice, outcomes) and one live check, as model_monitoring runs it.
        from mlpipeline.cli.common import cli_config
        from mlpipeline.dev.traffic import TrafficPlan, traffic_for_run
        from mlpipeline.stages.live import check_live_traffic

        traffic_for_run(tmp_path / "data" / "runs" / "first", TrafficPlan(rows=300, wrong_fraction=0.3))
        check = check_live_traffic(cli_config(str(settings)), check_id="check-1")

    assert main(["status", "--config", str(settings)]) == 0
    out = capsys.readouterr().out
    assert f"live     : {check.verdict} (v1, checked " in out and "check-1.json" in out
    assert main(["status", "--config", str(settings), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["live_check"]["check_id"], status["live_check"]["verdict"]) == ("check-1", check.verdict)
    champion = status["champion"]
    assert (champion["version"], champion["pipeline_run"]) == ("1", "first")
    assert champion["validation"]["metric"] == "accuracy" and champion["validation"]["threshold"] == 0.5
    assert champion["metrics"]["accuracy"] == pytest.approx(champion["validation"]["candidate_score"])
    decisions = {run["run"]: run["decision"] for run in status["runs"]}
    assert decisions == {
        "second": "unchanged data and training: nothing trained",
        "first": "deployed v1 (replacing none)",
    }
    assert [run["run"] for run in status["runs"]] == ["second", "first"], "newest first"
    assert main(["status", "--config", str(settings), "--runs", "1", "--json"]) == 0
    assert [run["run"] for run in json.loads(capsys.readouterr().out)["runs"]] == ["second"]


@pytest.mark.parametrize(
    ("settings", "arguments", "message"),
    [
        ({"crawl_urll": "http://127.0.0.1:1/x.csv"}, [], "unknown setting(s) crawl_urll"),
        ({"metric_threshold": 1.5}, [], "metric_threshold 1.5 is outside what accuracy can be"),
        ({}, ["--set", "crawl_url=http://127.0.0.1:1/x.csv"], "crawl_url: may not be changed by a run's conf"),
        ({}, ["--set", "random_state"], "--set takes name=value"),
        ([1, 2], [], "must hold a JSON object of settings"),
    ],
)
def test_run_refuses_bad_settings_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: object, arguments: list[str], message: str
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    assert main(["run", "--config", str(path), *arguments]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert message in err
    assert "set it in --config or MLPIPELINE_<NAME>" in err or "conf" not in message
    assert not (tmp_path / "data").exists()


def test_run_names_the_stage_that_failed(served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, f"{served}/missing.csv", crawl_max_retries=0)
    assert main(["run", "--config", str(settings), "--run-id", "broken"]) == 1
    out, err = capsys.readouterr()
    assert "crawl     FAILED after" in out
    error = err.splitlines()[-1]
    assert error.startswith("error: crawl failed: ") and "404" in error
    assert _line(out, "records") == str(tmp_path / "data" / "runs" / "broken")


def test_progress_on_a_terminal_uses_rich_lines() -> None:
    import io

    from mlpipeline.cli.progress import Progress, StageFailed

    stream = io.StringIO()
    progress = Progress(stream, fancy=True)
    assert progress.step("crawl", lambda: 41 + 1, lambda n: f"{n} rows [not markup]") == 42
    progress.skip("deploy", "--no-deploy")
    with pytest.raises(StageFailed) as failed:
        progress.step("etl", lambda: 1 / 0)
    assert failed.value.stage == "etl" and isinstance(failed.value.cause, ZeroDivisionError)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("✓ crawl") and lines[0].endswith("42 rows [not markup]")
    assert lines[1] == "- deploy    skipped: --no-deploy"
    assert lines[2].startswith("✗ etl       FAILED after")


def test_report_open_hands_the_file_to_the_browser(tmp_path: Path) -> None:
    """--open goes through Python's webbrowser, which honours $BROWSER: here a script that records what it got."""
    records = tmp_path / "data" / "runs" / "run-1"
    records.mkdir(parents=True)
    config = build_config({"mlflow_tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"})
    (records / "config.json").write_text(config.model_dump_json())
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "mlpipeline", "report", str(records), "--open"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "BROWSER": f"{browser} %s", "PYTHONPATH": str(Path(mlpipeline.__file__).parents[1])},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = Path(done.stdout.strip())
    assert written == records / "report.html" and written.is_file()
    assert opened.read_text() == written.resolve().as_uri()


def test_the_installed_command_is_the_same_command_line() -> None:
    installed = Path(sys.executable).parent / "mlpipeline"
    assert installed.is_file(), "pip install -e . installs the mlpipeline command ([project.scripts])"
    done = subprocess.run([str(installed), "run", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mlpipeline run") and "--no-deploy" in done.stdout
