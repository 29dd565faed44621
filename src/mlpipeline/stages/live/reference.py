"""The champion's own reference, bound to its registered version at deploy: what live traffic is compared with.

Deploy writes a compact profile next to the model (``models/<run>/<candidate>/reference/``), logs it as the
``reference/`` artifacts of the candidate's MLflow run and tags the registered version with where it is and with
the validation metric and score. Live monitoring reads the version the champion alias points at and that
version's reference from the registry: never whatever files another run happened to leave.

The profile is a seeded sample of rows, not pre-binned histograms, so PSI and KS are computed by exactly the
functions of :mod:`mlpipeline.stages.monitor.drift` (PSI needs the reference's own quantile bins; KS needs values).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from mlpipeline.config import DatasetSchema, PipelineConfig
from mlpipeline.registry import champion_version
from mlpipeline.stages.monitor.drift import model_input
from mlpipeline.stages.train import TrainResult
from mlpipeline.storage import atomic_directory

# Tags of a registered model version.
REFERENCE_TAG = "reference_uri"  # the MLflow artifact URI of the reference directory
REFERENCE_PATH_TAG = "reference_path"  # the same files on the data volume (for people; the URI is the truth)
VALIDATION_METRIC_TAG = "validation_metric"
VALIDATION_SCORE_TAG = "validation_score"

REFERENCE_ARTIFACT = "reference"
PROFILE_FILE = "profile.json"
FEATURES_FILE = "features.parquet"
PREDICTIONS_FILE = "predictions.parquet"
PREDICTION_COLUMN = "prediction"
PROFILE_FORMAT = 1
# Rows kept of the training data (features) and of the holdout (the model's predictions): PSI over 10 quantile
# bins and KS are as precise on 5000 reference rows as on millions, and the files stay small (~100s of KiB).
REFERENCE_SAMPLE_ROWS = 5000


class ReferenceError(RuntimeError):
    """The champion has no usable reference (deployed before references were bound, or its files are gone)."""


@dataclass(frozen=True)
class Reference:
    """A champion version's reference: its profile, a sample of its training features and its predictions on
    (a sample of) its held-out rows."""

    model_name: str
    version: str
    uri: str
    profile: dict[str, Any]
    features: pd.DataFrame
    predictions: pd.Series

    @property
    def schema(self) -> DatasetSchema:
        return DatasetSchema.model_validate(self.profile["schema"])

    @property
    def task(self) -> str:
        return str(self.profile["task"])

    @property
    def metric(self) -> str:
        return str(self.profile["metric"])

    @property
    def validation_score(self) -> float:
        return float(self.profile["validation_score"])

    @property
    def mlflow_run_id(self) -> str:
        return str(self.profile["mlflow_run_id"])


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    # Seeded: a retried deploy writes the same reference.
    return frame.sample(n=rows, random_state=0) if len(frame) > rows else frame


def write_reference(
    directory: Path, config: PipelineConfig, candidate: TrainResult, metric: str, score: float, model: Any
) -> None:
    """Write the profile, the training-feature sample and the holdout predictions of ``model`` into ``directory``."""
    schema = config.dataset_schema
    full_holdout = pd.read_parquet(candidate.holdout_path)
    # The training data; without it (a candidate handed over without its processed data) the held-out rows,
    # which are a random split of that same data.
    processed = candidate.processed_data_path
    source = processed if processed and Path(processed).is_file() else None
    training = full_holdout if source is None else pd.read_parquet(source, columns=schema.feature_names)
    training = training[schema.feature_names]
    _sample(training, REFERENCE_SAMPLE_ROWS).reset_index(drop=True).to_parquet(directory / FEATURES_FILE, index=False)
    holdout = _sample(full_holdout, REFERENCE_SAMPLE_ROWS)
    predicted = np.asarray(model.predict(model_input(holdout, schema)))
    pd.DataFrame({PREDICTION_COLUMN: predicted}).to_parquet(directory / PREDICTIONS_FILE, index=False)
    profile = {
        "format": PROFILE_FORMAT,
        "model_name": config.registered_model_name,
        "candidate": candidate.candidate,
        "mlflow_run_id": candidate.mlflow_run_id,
        "task": candidate.task or config.task,
        "classes": candidate.classes,
        "schema": schema.model_dump(mode="json"),
        "metric": metric,
        "validation_score": float(score),
        "features_source": source or candidate.holdout_path,
        "training_rows": len(training),
        "feature_sample_rows": min(len(training), REFERENCE_SAMPLE_ROWS),
        "holdout_rows": candidate.n_test,
        "prediction_sample_rows": len(predicted),
        "processed_data_path": candidate.processed_data_path,
        "data_sha256": candidate.data_sha256,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (directory / PROFILE_FILE).write_text(json.dumps(profile, indent=2, default=str))


def bind_reference(
    client: MlflowClient,
    config: PipelineConfig,
    *,
    candidate: TrainResult,
    version: str,
    metric: str,
    score: float,
    model: Any,
) -> str:
    """Make sure registered ``version`` carries its reference (idempotent: a retry, or a version reused for the same
    model, keeps the one it has). Returns the reference's artifact URI."""
    name = config.registered_model_name
    existing = client.get_model_version(name, version).tags.get(REFERENCE_TAG)
    if existing:
        return existing
    local = Path(candidate.holdout_path).parent / REFERENCE_ARTIFACT
    if not local.exists():  # a retry after the files were written reuses them
        with atomic_directory(local) as tmp:
            write_reference(tmp, config, candidate, metric, score, model)
    client.log_artifacts(candidate.mlflow_run_id, str(local), REFERENCE_ARTIFACT)
    uri = f"runs:/{candidate.mlflow_run_id}/{REFERENCE_ARTIFACT}"
    tags = {
        VALIDATION_METRIC_TAG: metric,
        VALIDATION_SCORE_TAG: repr(float(score)),
        REFERENCE_PATH_TAG: str(local),
        REFERENCE_TAG: uri,  # last: its presence says the others are set
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return uri


def champion_reference(client: MlflowClient, config: PipelineConfig) -> Reference | None:
    """The current champion's reference, from the registry; None when there is no champion."""
    champion = champion_version(client, config)
    return None if champion is None else load_reference(config, champion)


def load_reference(config: PipelineConfig, version: ModelVersion) -> Reference:
    """Download and read ``version``'s reference; ReferenceError, saying what to do, if it has none."""
    import mlflow.artifacts

    uri = version.tags.get(REFERENCE_TAG)
    label = f"version {version.version} of {version.name!r}"
    if not uri:
        raise ReferenceError(
            f"{label} has no {REFERENCE_TAG!r} tag: it was deployed before live monitoring bound a reference to "
            "each version. Deploy a new champion (trigger ml_pipeline with a changed training setting) to monitor it."
        )
    with tempfile.TemporaryDirectory(prefix="mlpipeline-reference-") as tmp:
        try:
            where = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=tmp, tracking_uri=config.mlflow_tracking_uri
                )
            )
            profile = json.loads((where / PROFILE_FILE).read_text())
            features = pd.read_parquet(where / FEATURES_FILE)
            predictions = pd.read_parquet(where / PREDICTIONS_FILE)[PREDICTION_COLUMN]
        except (OSError, ValueError, KeyError) as exc:
            raise ReferenceError(f"the reference of {label} at {uri} cannot be read: {exc}") from exc
    if profile.get("format") != PROFILE_FORMAT:
        raise ReferenceError(f"the reference of {label} has format {profile.get('format')}, not {PROFILE_FORMAT}")
    return Reference(version.name, str(version.version), uri, profile, features, predictions)
