from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlpipeline.config import ConfigError
from mlpipeline.etl import EtlResult
from mlpipeline.train import TrainError, evaluate, features_and_target, train
from tests.pipeline_data import Workspace, workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def processed(ws: Workspace) -> EtlResult:
    return ws.processed("data1")


def test_train_logs_a_reloadable_model_with_real_metrics(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config()
    result = train(config, run="t1", processed_data_path=processed.data_path, data_sha256="f" * 64)
    assert set(result.metrics) >= {"accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall"}
    assert 0.7 < result.metrics["accuracy"] < 0.95, "the bundled data is learnable but not trivial"
    holdout = pd.read_parquet(result.holdout_path)
    assert len(holdout) == result.n_test == round(processed.rows_out * config.test_size)
    metrics_file = json.loads(Path(result.metrics_path).read_text())
    assert (
        len(metrics_file["confusion_matrix"]) == 2 and sum(map(sum, metrics_file["confusion_matrix"])) == result.n_test
    )

    client = MlflowClient(ws.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["data_sha256"] == "f" * 64
    assert run.data.params["model_type"] == "hist_gradient_boosting"
    assert run.data.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])

    info = mlflow.models.get_model_info(result.model_uri)
    assert [c.name for c in info.signature.inputs.inputs] == config.dataset_schema.feature_names
    reloaded = mlflow.sklearn.load_model(result.model_uri)
    features, target = features_and_target(holdout, config.dataset_schema)
    assert evaluate(reloaded, features, target)["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_rerunning_train_for_the_same_run_returns_the_same_result(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config()
    first = train(config, run="t2", processed_data_path=processed.data_path, data_sha256="x")
    again = train(config, run="t2", processed_data_path=processed.data_path, data_sha256="x")
    assert again == first
    runs = MlflowClient(ws.tracking_uri).search_runs(
        [MlflowClient(ws.tracking_uri).get_experiment_by_name("ml_pipeline").experiment_id],
        filter_string="tags.pipeline_run = 't2'",
    )
    assert len(runs) == 1


@pytest.mark.parametrize(
    ("model_type", "hyperparameters"),
    [("random_forest", {"n_estimators": 30}), ("logistic_regression", {"C": 0.5}), ("hist_gradient_boosting", {})],
)
def test_every_supported_model_type_trains(
    ws: Workspace, processed: EtlResult, model_type: str, hyperparameters: dict
) -> None:
    config = ws.config(ml_model_type=model_type, hyperparameters=hyperparameters)
    result = train(config, run=f"type-{model_type}", processed_data_path=processed.data_path, data_sha256="x")
    assert result.model_type == model_type
    assert result.metrics["roc_auc"] > 0.7


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [({"no_such_knob": 1}, "has no parameter"), ({"max_iter": -3}, "max_iter")],
)
def test_bad_hyperparameters_name_the_field(
    ws: Workspace, processed: EtlResult, hyperparameters: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"hyperparameters: .*{message}"):
        train(
            ws.config(hyperparameters=hyperparameters),
            run="bad",
            processed_data_path=processed.data_path,
            data_sha256="x",
        )
    assert not (ws.root / "data" / "models" / "bad").exists()


def test_a_single_class_target_cannot_train(ws: Workspace, processed: EtlResult, tmp_path: Path) -> None:
    frame = pd.read_parquet(processed.data_path).assign(churned=0)
    path = tmp_path / "one_class.parquet"
    frame.to_parquet(path)
    with pytest.raises(TrainError, match="single class"):
        train(ws.config(), run="one", processed_data_path=str(path), data_sha256="x")
