"""What a training run shows a reviewer in MLflow, beside its model: the Airflow task that ran it (tags, and a link
back), the rows it learned from and was scored on (dataset inputs named by their fingerprint), the settings behind
it under readable names, and a one-paragraph description. ``stages.train`` logs them; nothing here shapes a model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from mlpipeline.config import Candidate, PipelineConfig
from mlpipeline.links import airflow_task_url
from mlpipeline.tasks import DEFAULT_METRIC

# MLflow keeps at most 36 characters of a dataset's digest: the first 32 hex digits of a sha256 (128 bits).
DIGEST_LENGTH = 32
TRAINING_CONTEXT = "training"
HOLDOUT_CONTEXT = "holdout"
# A longer feature list is cut in the ``features`` parameter (MLflow keeps 6000 characters); the model's signature
# lists them all.
MAX_FEATURES_PARAM = 1000


@dataclass(frozen=True)
class AirflowOrigin:
    """The Airflow task instance that trained a candidate (all None outside Airflow)."""

    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int = -1


def airflow_tags(config: PipelineConfig, origin: AirflowOrigin) -> dict[str, str]:
    """``airflow.dag_id``, ``airflow.run_id``, ``airflow.task_id``, ``airflow.map_index`` as far as they are known,
    and ``airflow.run_url``, the task instance's page, when the Airflow UI's address is configured."""
    known = {"airflow.dag_id": origin.dag_id, "airflow.run_id": origin.run_id, "airflow.task_id": origin.task_id}
    tags = {key: value for key, value in known.items() if value}
    if origin.task_id:
        tags["airflow.map_index"] = str(origin.map_index)
    if origin.dag_id and origin.task_id:
        url = airflow_task_url(config, origin.dag_id, origin.run_id, origin.task_id, origin.map_index)
        if url:
            tags["airflow.run_url"] = url
    return tags


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """The first ``DIGEST_LENGTH`` hex digits of a sha256 of the frame's column names and values, in row order
    (the index left out): the same rows read back from Parquet give the same fingerprint."""
    digest = hashlib.sha256(json.dumps([str(column) for column in frame.columns]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:DIGEST_LENGTH]


def log_datasets(
    config: PipelineConfig,
    *,
    training: pd.DataFrame,
    holdout: pd.DataFrame,
    training_source: str,
    holdout_source: str,
    data_sha256: str,
) -> None:
    """The training and held-out rows (features and target) as dataset inputs of the active run, contexts
    ``training`` and ``holdout``, each named after the model and digested by :func:`frame_fingerprint`; their
    input tags name the crawled snapshot they came from (its sha256) and this run's file. MLflow keeps one dataset
    per name and digest: the same rows in a later run show the source of the run that logged them first."""
    with warnings.catch_warnings():  # its hint on integer columns is about model signatures, not datasets
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        datasets = _datasets(config, training, holdout, training_source, holdout_source)
    mlflow.log_inputs(
        datasets=datasets,
        contexts=[TRAINING_CONTEXT, HOLDOUT_CONTEXT],
        tags_list=[
            {"data_sha256": data_sha256, "rows": str(len(frame)), "path": str(Path(source).resolve())}
            for frame, source in ((training, training_source), (holdout, holdout_source))
        ],
    )


def _datasets(
    config: PipelineConfig, training: pd.DataFrame, holdout: pd.DataFrame, training_source: str, holdout_source: str
) -> list[Any]:
    target = config.dataset_schema.target
    return [
        mlflow.data.from_pandas(
            frame,
            source=_local_source(source),
            targets=target,
            name=f"{config.registered_model_name}-{context}",
            digest=frame_fingerprint(frame),
        )
        for frame, source, context in (
            (training, training_source, TRAINING_CONTEXT),
            (holdout, holdout_source, HOLDOUT_CONTEXT),
        )
    ]


def run_params(
    config: PipelineConfig, candidate: Candidate, task: str, n_classes: int, model_params: dict[str, Any]
) -> dict[str, Any]:
    """The parameters a reviewer compares runs by: the candidate, the task, how the data was split, how the
    candidate is judged, the feature columns, and the estimator's every parameter (``hp.<name>``)."""
    metric = str(config.validation_metric or DEFAULT_METRIC[task])
    features = config.dataset_schema.feature_names
    shown = ",".join(features)
    if len(shown) > MAX_FEATURES_PARAM:
        shown = shown[: MAX_FEATURES_PARAM - 40].rsplit(",", 1)[0] + f",... ({len(features)} in all)"
    return {
        "model_type": candidate.ml_model_type,
        "candidate": candidate.name,
        "task": task,
        "target": config.dataset_schema.target,
        "n_classes": n_classes,
        "test_size": config.test_size,
        "random_state": config.random_state,
        "validation_metric": metric,
        "metric_threshold": config.threshold_for(metric),
        "n_features": len(features),
        "features": shown,
        **{f"hp.{name}": value for name, value in model_params.items()},
    }


def description(
    candidate: Candidate, *, task: str, run: str, origin: AirflowOrigin, airflow_url: str | None, scores: str
) -> str:
    """The run's description (MLflow shows it on the run's page), in Markdown."""
    by = f"Airflow run `{origin.run_id}` of `{origin.dag_id}`" if origin.dag_id else "a direct call of train()"
    task_link = f" ([task {origin.task_id}]({airflow_url}))" if airflow_url else ""
    return (
        f"Candidate **{candidate.name}** ({candidate.ml_model_type}, {task}) of pipeline run `{run}`, trained by "
        f"{by}{task_link}. Held-out scores: {scores}. Datasets: the `training` and `holdout` inputs; "
        "`metrics.json` has every metric (confusion matrix included)."
    )


def description_tag(text: str) -> dict[str, str]:
    return {MLFLOW_RUN_NOTE: text}


def _local_source(path: str) -> Any:
    """A local file as a dataset source (``file://`` URI). MLflow registers its local artifact source under two
    schemes and warns that a local URI matches both: they are the same class."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return resolve_dataset_source(Path(path).resolve().as_uri())
