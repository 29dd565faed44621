"""Train stage: a configurable scikit-learn Pipeline, seeded split, held-out metrics, logged to MLflow."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipeline.config import Candidate, ConfigError, DatasetSchema, ModelType, PipelineConfig
from mlpipeline.features import DateParts, date_part_columns
from mlpipeline.integrity import DIGEST_TAG, SIGNATURE_TAG, signing_key
from mlpipeline.registry import end_orphan_runs, ensure_experiment, log_sklearn_model, use_tracking
from mlpipeline.storage import DataLayout, atomic_directory, read_json

RECORD_FILE = "train.json"
HOLDOUT_FILE = "holdout.parquet"
METRICS_FILE = "metrics.json"
MODEL_ARTIFACT = "model"


class TrainError(RuntimeError):
    """Training could not produce a model; the message says why."""


@dataclass(frozen=True)
class TrainResult:
    candidate: str
    mlflow_run_id: str
    model_uri: str
    model_type: str
    metrics: dict[str, float]
    holdout_path: str
    metrics_path: str
    processed_data_path: str
    data_sha256: str
    n_train: int
    n_test: int
    seconds: float
    # The signed sha256 of the logged model's files (also tags of the MLflow run): what every load verifies.
    model_sha256: str = ""
    model_signature: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _estimator(model_type: ModelType, hyperparameters: dict[str, Any], random_state: int) -> ClassifierMixin:
    estimators: dict[str, type[ClassifierMixin]] = {
        "random_forest": RandomForestClassifier,
        "hist_gradient_boosting": HistGradientBoostingClassifier,
        "logistic_regression": LogisticRegression,
    }
    defaults: dict[str, dict[str, Any]] = {
        "random_forest": {"n_estimators": 200, "min_samples_leaf": 2, "n_jobs": -1},
        "hist_gradient_boosting": {"max_iter": 200, "learning_rate": 0.1},
        "logistic_regression": {"max_iter": 1000},
    }
    estimator = estimators[model_type](random_state=random_state)
    params = {**defaults[model_type], **hyperparameters}
    valid = estimator.get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"invalid pipeline configuration: hyperparameters: {type(estimator).__name__} has no parameter(s) "
            f"{unknown}; valid ones are {sorted(valid)}"
        )
    try:
        estimator.set_params(**params)
        # sklearn validates parameter values at fit time; check them now so a bad value names the field.
        estimator._validate_params()  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid pipeline configuration: hyperparameters: {exc}") from exc
    return estimator


def check_candidates(config: PipelineConfig) -> None:
    """Raise ConfigError now, naming the candidate, if any candidate's hyperparameters are invalid (rather than
    after crawling and cleaning the data)."""
    for candidate in config.training_candidates():
        try:
            _estimator(candidate.ml_model_type, candidate.hyperparameters, config.random_state)
        except ConfigError as exc:
            where = f"candidates[{candidate.name}]" if config.candidates else "hyperparameters"
            raise ConfigError(str(exc).replace("hyperparameters:", f"{where}:", 1)) from None


def build_pipeline(
    schema: DatasetSchema, model_type: ModelType, hyperparameters: dict[str, Any], seed: int
) -> Pipeline:
    """Raw declared columns in, class probabilities out: the same object serves online."""
    dates = schema.columns_of_type("date")
    numeric = schema.columns_of_type("numeric", "integer", "boolean")
    numeric += [name for column in dates for name in date_part_columns(column)]
    categorical = schema.columns_of_type("categorical")
    # np.median per column gives the same medians as strategy="median", which sorts a masked copy of the whole
    # matrix (np.ma.median): ~10x slower, and then the largest part of the pipeline's preprocessing time.
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=np.median))]
    if model_type == "logistic_regression":
        numeric_steps.append(("scale", StandardScaler()))
    preprocess = ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ],
        remainder="drop",
    )
    return Pipeline(
        [
            ("dates", DateParts(dates)),
            ("preprocess", preprocess),
            ("model", _estimator(model_type, hyperparameters, seed)),
        ]
    )


def features_and_target(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[pd.DataFrame, pd.Series]:
    missing = [c for c in [*schema.feature_names, schema.target] if c not in frame.columns]
    if missing:
        raise TrainError(f"processed data lacks column(s) {missing}; was it produced with this dataset_schema?")
    features = frame[schema.feature_names].copy()
    for column in schema.columns_of_type("boolean", "integer"):
        # As floats, integers and booleans (0/1) can carry a missing value to the imputer at serving time;
        # the model's signature then says "double" for them, so the endpoint accepts null.
        features[column] = features[column].astype("float64")
    return features, frame[schema.target].astype("int64")


def evaluate(model: Any, features: pd.DataFrame, target: pd.Series) -> dict[str, Any]:
    """Held-out metrics; the same function scores the champion during validation."""
    predicted = model.predict(features)
    probability = model.predict_proba(features)[:, 1]
    metrics: dict[str, Any] = {
        "accuracy": accuracy_score(target, predicted),
        "balanced_accuracy": balanced_accuracy_score(target, predicted),
        "f1": f1_score(target, predicted, zero_division=0),
        "precision": precision_score(target, predicted, zero_division=0),
        "recall": recall_score(target, predicted, zero_division=0),
        "roc_auc": roc_auc_score(target, probability) if target.nunique() == 2 else float("nan"),
    }
    metrics = {name: round(float(value), 6) for name, value in metrics.items()}
    metrics["confusion_matrix"] = confusion_matrix(target, predicted, labels=[0, 1]).tolist()
    return metrics


@dataclass(frozen=True)
class _Split:
    """The seeded, stratified train/held-out split every candidate of a run shares."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def train(
    config: PipelineConfig,
    *,
    run: str,
    processed_data_path: str,
    data_sha256: str,
    pipeline_run_id: str | None = None,
    candidate: Candidate | None = None,
) -> TrainResult:
    """Fit one candidate, evaluate it on the held-out split, log everything to MLflow. Idempotent per run and
    candidate. ``candidate`` defaults to the config's only candidate."""
    candidate = _chosen(config, candidate)
    out_dir = DataLayout.of(config.data_dir).models(run) / candidate.name
    if (out_dir / RECORD_FILE).exists():
        return TrainResult(**read_json(out_dir / RECORD_FILE))

    signing_key()  # without the key no model can be signed: refuse before the costly fit
    started = time.perf_counter()
    split = _split(config, processed_data_path)
    pipeline = _fit(config, candidate, split)
    metrics = evaluate(pipeline, split.x_test, split.y_test)
    tags = {
        "data_sha256": data_sha256,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pipeline_run": run,
        "airflow_run_id": pipeline_run_id or run,
        "processed_data_path": processed_data_path,
        "model_type": candidate.ml_model_type,
        "candidate": candidate.name,
    }
    with atomic_directory(out_dir) as tmp:
        _write_holdout(tmp, config.dataset_schema, split, metrics)
        mlflow_run_id, model_uri, signed = _log_to_mlflow(config, candidate, run, tags, pipeline, split, metrics)
        result = TrainResult(
            candidate=candidate.name,
            mlflow_run_id=mlflow_run_id,
            model_uri=model_uri,
            model_type=candidate.ml_model_type,
            metrics=_scalar(metrics),
            holdout_path=str(out_dir / HOLDOUT_FILE),
            metrics_path=str(out_dir / METRICS_FILE),
            processed_data_path=processed_data_path,
            data_sha256=data_sha256,
            n_train=len(split.x_train),
            n_test=len(split.x_test),
            seconds=round(time.perf_counter() - started, 3),
            model_sha256=signed[DIGEST_TAG],
            model_signature=signed[SIGNATURE_TAG],
        )
        (tmp / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _chosen(config: PipelineConfig, candidate: Candidate | None) -> Candidate:
    candidates = config.training_candidates()
    if candidate is None:
        if len(candidates) != 1:
            raise ValueError(f"the config has {len(candidates)} candidates: say which one to train")
        return candidates[0]
    if candidate.name is None:
        raise ValueError("a candidate to train needs its name (use config.training_candidates())")
    return candidate


def _split(config: PipelineConfig, processed_data_path: str) -> _Split:
    schema = config.dataset_schema
    features, target = features_and_target(pd.read_parquet(processed_data_path), schema)
    if target.nunique() < 2:
        raise TrainError(f"the target {schema.target!r} has a single class in {processed_data_path}; cannot train")
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=config.test_size, random_state=config.random_state, stratify=target
    )
    return _Split(x_train, x_test, y_train, y_test)


def _fit(config: PipelineConfig, candidate: Candidate, split: _Split) -> Pipeline:
    pipeline = build_pipeline(
        config.dataset_schema, candidate.ml_model_type, candidate.hyperparameters, config.random_state
    )
    pipeline.fit(split.x_train, split.y_train)
    estimator = pipeline[-1]
    if "n_jobs" in estimator.get_params():
        # Fit on every core, but predict on one: a forest's threads add up tree probabilities in whatever order
        # they finish, so parallel predictions differ in the last bits from call to call. Scores on the same
        # holdout (the champion gate, the smoke test, the serving fast path's bit-for-bit check) must not.
        estimator.set_params(n_jobs=1)
    return pipeline


def _scalar(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if isinstance(value, float)}


def _write_holdout(directory: Path, schema: DatasetSchema, split: _Split, metrics: dict[str, Any]) -> None:
    """The held-out rows (validation scores the champion on exactly these) and the full metrics."""
    holdout = split.x_test.assign(**{schema.target: split.y_test.to_numpy()}).reset_index(drop=True)
    holdout.to_parquet(directory / HOLDOUT_FILE, index=False)
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def _log_to_mlflow(
    config: PipelineConfig,
    candidate: Candidate,
    run: str,
    tags: dict[str, str],
    pipeline: Pipeline,
    split: _Split,
    metrics: dict[str, Any],
) -> tuple[str, str, dict[str, str]]:
    """One MLflow run with the tags, parameters, metrics and the signed model; returns (run id, model URI, the
    run's tags, with the model's signed digest)."""
    client = use_tracking(config)
    experiment_id = ensure_experiment(client, config.mlflow_experiment, config.mlflow_artifact_location)
    # An earlier attempt of this same training that was killed left its MLflow run RUNNING: end it as FAILED.
    end_orphan_runs(client, experiment_id, {"pipeline_run": run, "candidate": str(candidate.name)})
    # Tags at creation, so even a run killed right after it started can be matched as an orphan by the retry.
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"train-{run}-{candidate.name}", tags=tags
    ) as mlflow_run:
        mlflow.log_params(
            {
                "model_type": candidate.ml_model_type,
                "candidate": candidate.name,
                "test_size": config.test_size,
                "random_state": config.random_state,
                "n_train": len(split.x_train),
                "n_test": len(split.x_test),
                "features": ",".join(config.dataset_schema.feature_names),
                **{f"hp.{k}": v for k, v in pipeline.named_steps["model"].get_params().items()},
            }
        )
        mlflow.log_metrics(_scalar(metrics))
        mlflow.log_dict(metrics, "metrics.json")
        example = split.x_train.head(5)
        signature = infer_signature(example, pipeline.predict(example))
        info = log_sklearn_model(pipeline, signature=signature, input_example=example, name=MODEL_ARTIFACT)
    signed_tags = client.get_run(mlflow_run.info.run_id).data.tags
    return mlflow_run.info.run_id, info.model_uri, signed_tags


def load_holdout(path: str | Path, schema: DatasetSchema) -> tuple[pd.DataFrame, pd.Series]:
    return features_and_target(pd.read_parquet(path), schema)
