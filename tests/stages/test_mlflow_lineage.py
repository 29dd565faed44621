"""What a reviewer finds in MLflow after train(): the Airflow task instance that trained the candidate (tags, a link
back), the training and held-out rows as dataset inputs whose digests are the rows' fingerprints, readable
parameters and a description, and an experiment marked for model training (not the generative-AI overview)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from mlpipeline.registry import EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND, ensure_experiment
from mlpipeline.stages.etl import EtlResult
from mlpipeline.stages.train import train
from mlpipeline.stages.train_tracking import DIGEST_LENGTH, frame_fingerprint
from tests.pipeline_data import Workspace, workspace

AIRFLOW_RUN_ID = "manual__2026-01-02T03:04:05+00:00"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("lineage"))


@pytest.fixture(scope="module")
def processed(ws: Workspace) -> EtlResult:
    return ws.processed("lineage", rows=600)


def test_a_training_run_names_and_links_the_airflow_task_that_trained_it(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config(airflow_ui_url="http://airflow.example:8080/")
    result = train(
        config,
        run="a1",
        processed_data_path=processed.data_path,
        data_sha256="a" * 64,
        pipeline_run_id=AIRFLOW_RUN_ID,
        dag_id="ml_pipeline",
        task_id="train_model",
        map_index=2,
    )
    tags = MlflowClient(ws.tracking_uri).get_run(result.mlflow_run_id).data.tags
    assert tags["airflow.dag_id"] == "ml_pipeline" and tags["airflow.run_id"] == AIRFLOW_RUN_ID
    assert tags["airflow.task_id"] == "train_model" and tags["airflow.map_index"] == "2"
    assert tags["airflow.run_url"] == (
        "http://airflow.example:8080/dags/ml_pipeline/runs/manual__2026-01-02T03%3A04%3A05%2B00%3A00"
        "/tasks/train_model/mapped/2"
    )
    note = tags[MLFLOW_RUN_NOTE]
    assert f"Airflow run `{AIRFLOW_RUN_ID}`" in note and tags["airflow.run_url"] in note
    assert f"accuracy {result.metrics['accuracy']:.4f}" in note.split("Held-out scores: ", 1)[1].split(",")[0]


def test_without_airflow_there_are_no_airflow_tags_and_no_link(ws: Workspace, processed: EtlResult) -> None:
    result = train(ws.config(), run="a2", processed_data_path=processed.data_path, data_sha256="b" * 64)
    tags = MlflowClient(ws.tracking_uri).get_run(result.mlflow_run_id).data.tags
    assert not [key for key in tags if key.startswith("airflow.")]
    assert "a direct call of train()" in tags[MLFLOW_RUN_NOTE]
    # Airflow known but no UI address configured: the tags, no link.
    linked = train(
        ws.config(),
        run="a3",
        processed_data_path=processed.data_path,
        data_sha256="b" * 64,
        pipeline_run_id="r",
        dag_id="d",
        task_id="t",
        map_index=None,  # what Airflow's task instance says for a task that is not mapped
    )
    tags = MlflowClient(ws.tracking_uri).get_run(linked.mlflow_run_id).data.tags
    assert tags["airflow.map_index"] == "-1" and "airflow.run_url" not in tags


def test_training_and_holdout_rows_are_dataset_inputs_named_by_their_fingerprint(
    ws: Workspace, processed: EtlResult
) -> None:
    config = ws.config()
    result = train(config, run="d1", processed_data_path=processed.data_path, data_sha256="c" * 64)
    inputs = MlflowClient(ws.tracking_uri).get_run(result.mlflow_run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
    assert set(by_context) == {"training", "holdout"}

    holdout = by_context["holdout"]
    stored = pd.read_parquet(result.holdout_path)
    assert holdout.dataset.digest == frame_fingerprint(stored) and len(holdout.dataset.digest) == DIGEST_LENGTH
    assert holdout.dataset.name == f"{config.registered_model_name}-holdout"
    assert json.loads(holdout.dataset.profile)["num_rows"] == result.n_test
    input_tags = {t.key: t.value for t in holdout.tags}
    assert input_tags["data_sha256"] == "c" * 64 and input_tags["path"] == result.holdout_path
    # MLflow keeps one dataset per name and digest: the same rows, held out by an earlier run of this module,
    # show that run's file as their source.
    first_source = json.loads(holdout.dataset.source)["uri"].removeprefix("file://")
    assert first_source.endswith(f"/{result.candidate}/holdout.parquet")
    assert frame_fingerprint(pd.read_parquet(first_source)) == holdout.dataset.digest

    training = by_context["training"]
    assert training.dataset.name == f"{config.registered_model_name}-training"
    assert json.loads(training.dataset.profile)["num_rows"] == result.n_train
    assert training.dataset.digest != holdout.dataset.digest
    assert json.loads(training.dataset.source)["uri"] == f"file://{processed.data_path}"
    assert {t.key: t.value for t in training.tags}["path"] == processed.data_path
    schema_columns = [c["name"] for c in json.loads(training.dataset.schema)["mlflow_colspec"]]
    assert config.dataset_schema.target in schema_columns
    # The same split again (another candidate, the same seed): the same training rows, the same digest.
    again = train(
        ws.config(ml_model_type="logistic_regression", hyperparameters={}),
        run="d1-lr",
        processed_data_path=processed.data_path,
        data_sha256="c" * 64,
    )
    other = MlflowClient(ws.tracking_uri).get_run(again.mlflow_run_id).inputs.dataset_inputs
    assert {i.dataset.digest for i in other} == {i.dataset.digest for i in inputs}


def test_parameters_are_what_a_reviewer_compares(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config()
    result = train(config, run="p1", processed_data_path=processed.data_path, data_sha256="x")
    params = MlflowClient(ws.tracking_uri).get_run(result.mlflow_run_id).data.params
    assert params["validation_metric"] == "accuracy" and params["metric_threshold"] == str(
        config.threshold_for("accuracy")
    )
    assert params["target"] == config.dataset_schema.target
    assert params["n_features"] == str(len(config.dataset_schema.feature_names))
    assert params["hp.max_iter"] == "60" and params["n_test"] == str(result.n_test)


def test_the_experiment_opens_on_its_training_runs(ws: Workspace, processed: EtlResult) -> None:
    client = MlflowClient(ws.tracking_uri)
    train(ws.config(), run="e1", processed_data_path=processed.data_path, data_sha256="x")
    experiment = client.get_experiment_by_name("ml_pipeline")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    # An experiment created before (without the tag) is marked when found; a kind someone chose is kept.
    older = client.create_experiment("older", artifact_location=str(ws.root / "older"))
    assert ensure_experiment(client, "older", None) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    client.set_experiment_tag(older, EXPERIMENT_KIND_TAG, "genai_development")
    ensure_experiment(client, "older", None)
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "genai_development"
