"""The monitor stage on multiclass and regression data with odd column names: the target and the deployed model's
predictions compared by task, recorded in monitor.json and MLflow.

The deployed models are real, signed and registered in the test MLflow registry and loaded by the stage. The
endpoint is a port nobody listens on, so the live checks fail (MonitorError, after the report is written): these
tests are about the drift, which is measured and recorded whatever the endpoint's health.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlpipeline.config import DatasetSchema, PipelineConfig
from mlpipeline.stages.monitor import MonitorError, MonitorReport, monitor
from mlpipeline.stages.monitor.stage import task_of
from mlpipeline.stages.monitor.tracking import metric_safe_names
from mlpipeline.storage import read_json, run_key
from tests import model_factory as mf
from tests.model_factory import Registry
from tests.stages.monitor.support import (
    AREA,
    FRUIT,
    FRUIT_SCHEMA,
    PRICE,
    PRICE_SCHEMA,
    SCHEMA,
    SHIFTED_MIX,
    SIZE,
    fruit_frame,
    fruit_model,
    price_frame,
    price_model,
    training_features,
)

RUN = "manual__2026-02-03T04:05:06+00:00"


def _register(reg: Registry, model: Any, features: pd.DataFrame, name: str) -> str:
    """Log ``model`` signed, as the train stage does, and register it as a version of ``name``."""
    import mlflow
    from mlflow.models import infer_signature

    from mlpipeline.registry import log_sklearn_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # integer-column hints
        signature = infer_signature(features, model.predict(features))
        with mlflow.start_run(experiment_id=reg.experiment_id):
            info = log_sklearn_model(model, signature=signature, input_example=features.head(3))
        return str(mlflow.register_model(info.model_uri, name).version)


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module")
def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def fruit_version(reg: Registry) -> str:
    frame = fruit_frame(1500, seed=0)
    return _register(reg, fruit_model(frame), training_features(frame, FRUIT_SCHEMA), "monitor_fruit")


@pytest.fixture(scope="module")
def price_version(reg: Registry) -> str:
    frame = price_frame(1500, seed=0)
    return _register(reg, price_model(frame), training_features(frame, PRICE_SCHEMA), "monitor_price")


def _write(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> dict[str, str]:
    paths = {}
    for name, frame in frames.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    return paths


def _monitor(
    reg: Registry, tmp_path: Path, url: str, task: str, schema: DatasetSchema, name: str, version: str, **data: Any
) -> MonitorReport:
    config = PipelineConfig(
        data_dir=str(tmp_path / "data"),
        dataset_schema=schema,
        mlflow_tracking_uri=reg.tracking_uri,
        mlflow_artifact_location=str(reg.root / "monitoring-artifacts"),
        registered_model_name=name,
        serving_url=url,
        serving_timeout_seconds=2,
    ).resolved(task, schema)  # type: ignore[arg-type]
    paths = _write(tmp_path, data)
    with pytest.raises(MonitorError, match="unreachable") as caught:
        monitor(config, run=RUN, expected_version=version, **{f"{side}_path": p for side, p in paths.items()})
    result = caught.value.result
    assert result is not None and result.monitoring_errors == ()  # drift itself was fully measured
    return result


def _mlflow_metrics(reg: Registry, result: MonitorReport) -> dict[str, float]:
    return reg.client.get_run(result.mlflow_run_id).data.metrics


def test_multiclass_string_labels_same_mix_is_not_flagged(
    reg: Registry, dead_url: str, fruit_version: str, tmp_path: Path
) -> None:
    result = _monitor(
        reg,
        tmp_path,
        dead_url,
        "multiclass",
        FRUIT_SCHEMA,
        "monitor_fruit",
        fruit_version,
        reference=fruit_frame(2000, seed=1),
        current=fruit_frame(2000, seed=2),
        holdout=fruit_frame(400, seed=3),
    )
    assert result.target_drifted is False and result.predictions_drifted is False
    assert result.drifted_features == ()
    assert not any("drift" in alert for alert in result.alerts), result.alerts
    drift = read_json(Path(result.report_path))["drift"]
    assert drift["task"] == "multiclass" and drift["target"]["column"] == FRUIT
    assert set(drift["target"]["class_shares"]) == set(drift["predictions"]["class_shares"])
    assert (
        f"version {fruit_version} of 'monitor_fruit' predicted on 2000 reference and 400"
        in drift["predictions"]["note"]
    )
    metrics = _mlflow_metrics(reg, result)
    assert metrics["target_drifted"] == 0.0 and metrics["predictions_drifted"] == 0.0
    assert "psi.size _cm_" in metrics and "psi.colour/shade" in metrics and "psi.is ripe" in metrics


def test_multiclass_string_labels_shifted_mix_is_flagged(
    reg: Registry, dead_url: str, fruit_version: str, tmp_path: Path
) -> None:
    result = _monitor(
        reg,
        tmp_path,
        dead_url,
        "multiclass",
        FRUIT_SCHEMA,
        "monitor_fruit",
        fruit_version,
        reference=fruit_frame(2000, seed=1),
        current=fruit_frame(2000, seed=2, mix=SHIFTED_MIX),
        holdout=fruit_frame(400, seed=3, mix=SHIFTED_MIX),
    )
    assert result.target_drifted is True and result.predictions_drifted is True
    assert SIZE in result.drifted_features
    summary = result.to_dict()
    assert summary["target_drifted"] is True and summary["predictions_drifted"] is True
    assert any(a.startswith(f"drift in the target {FRUIT!r} (class mix): PSI") for a in summary["alerts"])
    assert any(a.startswith("drift in the deployed model's predictions (class mix)") for a in summary["alerts"])
    assert _mlflow_metrics(reg, result)["target_psi"] > 0.2


def test_regression_shifted_target_is_flagged_by_psi_and_ks(
    reg: Registry, dead_url: str, price_version: str, tmp_path: Path
) -> None:
    result = _monitor(
        reg,
        tmp_path,
        dead_url,
        "regression",
        PRICE_SCHEMA,
        "monitor_price",
        price_version,
        reference=price_frame(2000, seed=1),
        current=price_frame(2000, seed=2, area_shift=25),
        holdout=price_frame(400, seed=3, area_shift=25),
    )
    target = result.drift.target
    assert target is not None and target.kind == "numeric"
    assert result.target_drifted is True and target.psi > 0.2 and target.ks_pvalue < 1e-6
    assert result.predictions_drifted is True and result.drift.predictions.ks_pvalue < 1e-6
    alert = next(a for a in result.alerts if a.startswith(f"drift in the target {PRICE!r} (numeric)"))
    assert "PSI" in alert and "KS p-value" in alert
    assert AREA in result.drifted_features
    metrics = _mlflow_metrics(reg, result)
    assert metrics["target_ks_pvalue"] < 1e-6 and metrics["predictions_drifted"] == 1.0
    assert "psi.area / m2" in metrics and "psi.rooms _count_" in metrics


def test_regression_unshifted_target_is_not_flagged(
    reg: Registry, dead_url: str, price_version: str, tmp_path: Path
) -> None:
    result = _monitor(
        reg,
        tmp_path,
        dead_url,
        "regression",
        PRICE_SCHEMA,
        "monitor_price",
        price_version,
        reference=price_frame(2000, seed=1),
        current=price_frame(2000, seed=2),
        holdout=price_frame(400, seed=3),
    )
    assert result.target_drifted is False and result.predictions_drifted is False and result.drifted_features == ()


def test_a_model_that_cannot_be_loaded_is_a_monitoring_error(reg: Registry, dead_url: str, tmp_path: Path) -> None:
    config = PipelineConfig(
        data_dir=str(tmp_path / "data"),
        dataset_schema=PRICE_SCHEMA,
        mlflow_tracking_uri=reg.tracking_uri,
        mlflow_artifact_location=str(reg.root / "monitoring-artifacts"),
        registered_model_name="monitor_never_registered",
        serving_url=dead_url,
        serving_timeout_seconds=2,
    ).resolved("regression", PRICE_SCHEMA)
    paths = _write(tmp_path, {"reference": price_frame(300, seed=1), "holdout": price_frame(100, seed=2)})
    with pytest.raises(MonitorError, match="prediction drift could not be computed: version 7 of") as caught:
        monitor(
            config,
            run=RUN,
            current_path=paths["reference"],
            reference_path=paths["reference"],
            holdout_path=paths["holdout"],
            expected_version="7",
        )
    result = caught.value.result
    assert result.predictions_drifted is None and result.target_drifted is False  # the rest was still measured
    assert (
        read_json(Path(config.data_dir) / "runs" / run_key(RUN) / "monitor.json")["drift"]["predictions"]["psi"] is None
    )


def test_an_unresolved_config_decides_the_task_from_the_target_as_the_etl_does() -> None:
    def config(schema: DatasetSchema) -> PipelineConfig:
        return PipelineConfig(dataset_schema=schema)

    assert task_of(config(SCHEMA), mf.make_frame(200, seed=1)) == "binary"
    assert task_of(config(FRUIT_SCHEMA), fruit_frame(200, seed=1)) == "multiclass"
    assert task_of(config(PRICE_SCHEMA), price_frame(200, seed=1)) == "regression"
    assert task_of(config(PRICE_SCHEMA), price_frame(200, seed=1).drop(columns=[PRICE])) is None
    assert task_of(config(PRICE_SCHEMA).resolved("regression", PRICE_SCHEMA), fruit_frame(5, seed=1)) == "regression"


def test_metric_names_for_odd_column_names_are_valid_and_distinct() -> None:
    names = ["size (cm)", "size [cm]", "size _cm_", "a//b", "trailing/", "x/../y", "ok/path", "plain"]
    safe = metric_safe_names(names)
    assert (
        safe["size (cm)"] == "size _cm_" and safe["size [cm]"] == "size _cm__2" and safe["size _cm_"] == "size _cm__3"
    )
    assert safe["a//b"] == "a__b" and safe["trailing/"] == "trailing_" and safe["x/../y"] == "x_.._y"
    assert safe["ok/path"] == "ok/path" and safe["plain"] == "plain"
    assert len(set(safe.values())) == len(names)
