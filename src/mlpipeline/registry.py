"""Small helpers around MLflow shared by train, validate, deploy and monitor."""

from __future__ import annotations

import os

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlpipeline.config import PipelineConfig

# Quiet MLflow's per-call environment probing and its progress bars in task logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def use_tracking(config: PipelineConfig) -> MlflowClient:
    """Point the (process-global) fluent API at the configured server and return a client for it."""
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    mlflow.set_registry_uri(config.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=config.mlflow_tracking_uri, registry_uri=config.mlflow_tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Return the experiment id, creating it (with the configured artifact location) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another task created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def champion_version(client: MlflowClient, config: PipelineConfig) -> ModelVersion | None:
    """The version the champion alias points at, or None when there is no champion (yet)."""
    try:
        return client.get_model_version_by_alias(config.registered_model_name, config.champion_alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
