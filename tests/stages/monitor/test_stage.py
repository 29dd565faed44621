"""The monitor stage end-to-end against a live model server and a real MLflow store."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlpipeline.config import PipelineConfig
from mlpipeline.serving import ServerThread, create_app
from mlpipeline.stages.monitor import DriftReport, LiveChecks, MonitorError, MonitorReport, monitor
from mlpipeline.storage import read_json, run_key
from tests import model_factory as mf
from tests.model_factory import FEATURES, TARGET, LoggedModel, Registry
from tests.stages.monitor.support import SCHEMA

MODEL_NAME = "monitor_model"
RUN = "manual__2026-01-02T03:04:05+00:00"
HOLDOUT_ROWS = 40
# What the DAG, the emails and readers of monitor.json rely on.
SUMMARY_KEYS = [
    "healthy",
    "served_version",
    "expected_version",
    "latency_p50_ms",
    "latency_p95_ms",
    "live_accuracy",
    "requests",
    "failures",
    "drifted_features",
    "max_psi",
    "task",
    "target_drifted",
    "predictions_drifted",
    "report_path",
    "alerts",
    "notes",
    "mlflow_run_id",
]
REPORT_KEYS = [
    "run",
    "checked_at",
    "serving_url",
    "model_name",
    "healthy",
    "served_version",
    "expected_version",
    "health",
    "live",
    "drift",
    "problems",
    "alerts",
    "notes",
    "mlflow",
]
LIVE_KEYS = [
    "requests",
    "failures",
    "errors",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_max_ms",
    "latency_budget_ms",
    "live_accuracy",
    "scored_rows",
    "batch",
    "seconds",
]


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module")
def champion(reg: Registry) -> LoggedModel:
    return reg.register(reg.base(0), MODEL_NAME)


@pytest.fixture(scope="module")
def server_url(reg: Registry, champion: LoggedModel) -> Iterator[str]:
    app = create_app(tracking_uri=reg.tracking_uri, model_name=MODEL_NAME, poll_seconds=0)
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("monitor-data")
    frames = {
        "reference": mf.make_frame(2000, seed=1),
        "current": mf.make_frame(2000, seed=2),
        "drifted": mf.make_frame(2000, seed=3, shift=1.0),
        # As the train stage writes it: booleans as 0/1 floats.
        "holdout": mf.make_frame(HOLDOUT_ROWS, seed=5).astype({"paperless_billing": "float64"}),
        "drifted_holdout": mf.make_frame(HOLDOUT_ROWS, seed=6, shift=1.0).astype({"paperless_billing": "float64"}),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = str(root / f"{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    return paths


def _config(reg: Registry, tmp_path: Path, serving_url: str, **overrides: Any) -> PipelineConfig:
    settings: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "dataset_schema": SCHEMA,
        "mlflow_tracking_uri": reg.tracking_uri,
        "mlflow_artifact_location": str(reg.root / "monitoring-artifacts"),
        "registered_model_name": MODEL_NAME,
        "serving_url": serving_url,
        "serving_timeout_seconds": 10,
        "monitor_requests": HOLDOUT_ROWS,
        "monitor_latency_budget_ms": 2000,
    }
    config = PipelineConfig(**{**settings, **overrides})
    return config.resolved("binary", SCHEMA)  # as the ETL leaves it for the stages after it


def _run_monitor(
    config: PipelineConfig, data: dict[str, str], current: str = "current", holdout: str = "holdout", **kwargs: Any
) -> Any:
    return monitor(
        config,
        run=RUN,
        current_path=data[current],
        reference_path=data["reference"],
        holdout_path=data[holdout],
        **kwargs,
    )


def _report(config: PipelineConfig) -> dict[str, Any]:
    path = Path(config.data_dir) / "runs" / run_key(RUN) / "monitor.json"
    assert path.exists()
    return read_json(path)


def test_monitor_healthy_endpoint_end_to_end(
    reg: Registry, champion: LoggedModel, server_url: str, data: dict[str, str], tmp_path: Path
) -> None:
    config = _config(reg, tmp_path, server_url)
    result = _run_monitor(config, data, expected_version=champion.version)

    assert result.healthy and result.served_version == champion.version
    assert result.requests == HOLDOUT_ROWS + 1 and result.failures == 0  # single rows + one batch
    assert 0 < result.latency_p50_ms <= result.latency_p95_ms < 2000
    # Every held-out row was sent exactly once: live accuracy is the offline accuracy on the holdout.
    holdout = pd.read_parquet(data["holdout"])
    offline = float((champion.model.predict(holdout[FEATURES]) == holdout[TARGET]).mean())
    assert result.live_accuracy == pytest.approx(offline)
    assert result.drifted_features == () and result.alerts == ()
    assert result.max_psi is not None and result.max_psi < 0.1
    assert isinstance(result, MonitorReport)
    assert isinstance(result.live, LiveChecks) and isinstance(result.drift, DriftReport)
    payload = result.to_dict()
    json.dumps(payload, allow_nan=False)  # an XCom value: strict JSON
    assert list(payload) == SUMMARY_KEYS
    assert payload["drifted_features"] == [] and payload["alerts"] == []
    assert payload["task"] == "binary"
    assert payload["target_drifted"] is False and payload["predictions_drifted"] is False

    report = _report(config)
    record = result.to_record()
    assert list(record) == REPORT_KEYS and list(record["live"]) == LIVE_KEYS
    assert report == json.loads(json.dumps(record))  # the file holds the full record (its keys sorted)
    assert report["mlflow"] == {"tracking_uri": reg.tracking_uri, "run_id": result.mlflow_run_id, "error": None}
    assert report["healthy"] is True and report["live"]["batch"]["ok"] is True
    assert report["live"]["batch"]["disagreements"] == 0
    assert set(report["drift"]["features"]) == set(FEATURES)
    assert report["drift"]["target"]["column"] == TARGET and report["drift"]["target"]["kind"] == "categorical"
    predictions = report["drift"]["predictions"]
    assert predictions["kind"] == "categorical" and set(predictions["class_shares"]) <= {"0", "1"}
    assert predictions["note"] == (
        f"version {champion.version} of {MODEL_NAME!r} predicted on 2000 reference and {HOLDOUT_ROWS} current rows"
    )
    assert result.report_path == str(Path(config.data_dir).resolve() / "runs" / run_key(RUN) / "monitor.json")

    experiment = reg.client.get_experiment_by_name("ml_pipeline_monitoring")
    assert experiment is not None
    mlflow_run = reg.client.get_run(result.mlflow_run_id)
    assert mlflow_run.info.experiment_id == experiment.experiment_id
    assert mlflow_run.info.run_name == f"monitor-{run_key(RUN)}"
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.metrics["healthy"] == 1.0
    assert mlflow_run.data.metrics["failures"] == 0.0
    assert mlflow_run.data.metrics["live_accuracy"] == pytest.approx(offline)
    assert "psi.monthly_charges" in mlflow_run.data.metrics
    assert mlflow_run.data.metrics["target_drifted"] == 0.0 and "predictions_psi" in mlflow_run.data.metrics
    assert mlflow_run.data.params["task"] == "binary"
    artifacts = {a.path for a in reg.client.list_artifacts(result.mlflow_run_id)}
    assert {"drift_report.json", "monitor_report.json"} <= artifacts


def test_drifted_data_adds_alerts_naming_the_features(
    reg: Registry, champion: LoggedModel, server_url: str, data: dict[str, str], tmp_path: Path
) -> None:
    config = _config(reg, tmp_path, server_url)
    result = _run_monitor(config, data, current="drifted", expected_version=champion.version)
    assert result.healthy  # drift alone is not ill health
    assert {"tenure_months", "monthly_charges", "contract"} <= set(result.drifted_features)
    assert result.max_psi > 0.2
    for feature in ("tenure_months", "monthly_charges", "contract"):
        assert any(f"'{feature}'" in alert and "PSI" in alert for alert in result.alerts), result.alerts
    assert not any("'region'" in alert for alert in result.alerts)
    assert _report(config)["drift"]["drifted_features"] == list(result.drifted_features)


def test_predictions_on_drifted_held_out_rows_add_an_alert(
    reg: Registry, champion: LoggedModel, server_url: str, data: dict[str, str], tmp_path: Path
) -> None:
    config = _config(reg, tmp_path, server_url)
    result = _run_monitor(config, data, holdout="drifted_holdout", expected_version=champion.version)
    assert result.healthy and result.drifted_features == ()  # the training data did not move, its model's input did
    assert result.predictions_drifted is True and result.to_dict()["predictions_drifted"] is True
    assert any(a.startswith("drift in the deployed model's predictions (class mix): PSI") for a in result.alerts)


def test_endpoint_down_raises_after_writing_the_report(reg: Registry, data: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(reg, tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(MonitorError, match="unreachable") as caught:
        _run_monitor(config, data, expected_version="1")
    result = caught.value.result
    assert result is not None and not result.healthy and result.requests == 0
    report = _report(config)
    assert report["healthy"] is False and "unreachable" in report["problems"][0]
    assert report["drift"]["features"]  # drift is still measured and recorded
    assert reg.client.get_run(result.mlflow_run_id).data.metrics["healthy"] == 0.0


def test_version_mismatch_raises(
    reg: Registry, champion: LoggedModel, server_url: str, data: dict[str, str], tmp_path: Path
) -> None:
    config = _config(reg, tmp_path, server_url)
    with pytest.raises(MonitorError, match=f"serves version {champion.version} but version 999 was deployed"):
        _run_monitor(config, data, expected_version="999")
    assert _report(config)["served_version"] == champion.version


def test_latency_over_budget_is_ill_health(
    reg: Registry, champion: LoggedModel, server_url: str, data: dict[str, str], tmp_path: Path
) -> None:
    config = _config(reg, tmp_path, server_url, monitor_latency_budget_ms=0.001, monitor_requests=5)
    with pytest.raises(MonitorError, match="latency p95") as caught:
        _run_monitor(config, data)
    assert caught.value.result.failures == 0
    assert any("exceeds the budget" in alert for alert in caught.value.result.alerts)


def test_endpoint_without_a_model_raises(reg: Registry, data: dict[str, str], tmp_path: Path) -> None:
    app = create_app(tracking_uri=reg.tracking_uri, model_name="monitor_nothing_registered", poll_seconds=0)
    with ServerThread(app) as server:
        config = _config(reg, tmp_path, server.url)
        with pytest.raises(MonitorError, match="HTTP 503"):
            _run_monitor(config, data)
    assert _report(config)["health"]["status"] == "no_model"


def test_a_newer_champion_from_a_concurrent_run_is_monitored_not_failed(
    reg: Registry, champion: LoggedModel, server_url: str, data: dict[str, str], tmp_path: Path
) -> None:
    config = _config(reg, tmp_path, server_url)
    older = str(int(champion.version) - 1)  # what an earlier, slower run deployed before this champion
    result = _run_monitor(config, data, expected_version=older)
    assert result.healthy and result.served_version == champion.version
    # Said, but no alert: with deploys serialised a newer champion is another run's success, not drift.
    notes = result.to_dict()["notes"]
    assert any(f"version {older} deployed by this run was superseded by version {champion.version}" in n for n in notes)
    assert not any("superseded" in a for a in result.alerts)
