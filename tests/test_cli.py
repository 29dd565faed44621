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
