"""Train stage: a configurable scikit-learn Pipeline, seeded split, held-out metrics, logged to MLflow.

The estimator and the metrics follow the task (binary, multiclass, regression; ``mlpipeline.tasks``): a classifier
or a regressor of the chosen model type, a stratified split for classification and a plain one for regression,
and every metric of the task's table on the held-out rows (validation scores the champion with the same function).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from mlpipeline.config import Candidate, ConfigError, DatasetSchema, ModelType, PipelineConfig
from mlpipeline.features import DateParts, FeatureMatrix, date_part_columns
from mlpipeline.integrity import DIGEST_TAG, SIGNATURE_TAG, signing_key
from mlpipeline.registry import end_orphan_runs, ensure_experiment, log_sklearn_model, use_tracking
from mlpipeline.stages.evaluation import evaluate, json_classes
from mlpipeline.stages.train_tracking import (
    AirflowOrigin,
    airflow_tags,
    description,
    description_tag,
    log_datasets,
    run_params,
)
from mlpipeline.storage import DataLayout, atomic_directory, read_json
from mlpipeline.tasks import CLASSIFICATION, task_of_target

log = logging.getLogger(__name__)

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
    # binary / multiclass / regression, and a classifier's classes_ (JSON values); empty in records of older runs.
    task: str = ""
    classes: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_HYPERPARAMETERS = "invalid pipeline configuration: hyperparameters: "
# The estimator of each model type per kind of task (config.MODEL_TYPE_TASKS says which model type fits which).
ESTIMATORS: dict[str, dict[str, type[BaseEstimator]]] = {
    "random_forest": {"classification": RandomForestClassifier, "regression": RandomForestRegressor},
    "hist_gradient_boosting": {
        "classification": HistGradientBoostingClassifier,
        "regression": HistGradientBoostingRegressor,
    },
    "logistic_regression": {"classification": LogisticRegression},
    "ridge": {"regression": Ridge},
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 200, "min_samples_leaf": 2, "n_jobs": -1},
    "hist_gradient_boosting": {"max_iter": 200, "learning_rate": 0.1},
    "logistic_regression": {"max_iter": 1000},
    "ridge": {},
}
# Linear models need features on one scale; trees do not care.
_SCALED = frozenset({"logistic_regression", "ridge"})


def _kind(task: str) -> str:
    return "classification" if task in CLASSIFICATION else "regression"


def _estimator(
    model_type: ModelType, hyperparameters: dict[str, Any], random_state: int, task: str = "binary"
) -> BaseEstimator:
    kinds = ESTIMATORS[model_type]
    if _kind(task) not in kinds:
        raise ConfigError(f"invalid pipeline configuration: ml_model_type {model_type!r} does not fit a {task} task")
    estimator = kinds[_kind(task)](random_state=random_state)
    params = {**_DEFAULTS[model_type], **hyperparameters}
    valid = estimator.get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        name = type(estimator).__name__
        raise ConfigError(f"{_HYPERPARAMETERS}{name} has no parameter(s) {unknown}; valid ones are {sorted(valid)}")
    try:
        estimator.set_params(**params)
        # sklearn validates parameter values at fit time; check them now so a bad value names the field.
        estimator._validate_params()  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{_HYPERPARAMETERS}{exc}") from exc
    return estimator


def check_candidates(config: PipelineConfig) -> None:
    """Raise ConfigError now, naming the candidate, if any candidate's hyperparameters are invalid (rather than
    after crawling and cleaning the data). While the task is ``auto`` (the ETL decides it) a model type with a
    classifier and a regressor is refused only for what neither accepts; training checks the one it builds."""
    for candidate in config.training_candidates():
        try:
            _check_hyperparameters(candidate, config)
        except ConfigError as exc:
            where = f"candidates[{candidate.name}]" if config.candidates else "hyperparameters"
            raise ConfigError(str(exc).replace("hyperparameters:", f"{where}:", 1)) from None


def _check_hyperparameters(candidate: Candidate, config: PipelineConfig) -> None:
    if config.task != "auto":
        _estimator(candidate.ml_model_type, candidate.hyperparameters, config.random_state, config.task)
        return
    tasks = {"classification": "binary", "regression": "regression"}
    refusals: list[str] = []
    for kind in ESTIMATORS[candidate.ml_model_type]:
        try:
            _estimator(candidate.ml_model_type, candidate.hyperparameters, config.random_state, tasks[kind])
            return
        except ConfigError as exc:
            refusals.append(str(exc).removeprefix(_HYPERPARAMETERS))
    if len(refusals) == 1:
        raise ConfigError(_HYPERPARAMETERS + refusals[0])
    names = " nor ".join(cls.__name__ for cls in ESTIMATORS[candidate.ml_model_type].values())
    raise ConfigError(
        f"{_HYPERPARAMETERS}neither {names} accepts them (the task is auto: either may be built): "
        + " | ".join(refusals)
    )


def build_pipeline(
    schema: DatasetSchema, model_type: ModelType, hyperparameters: dict[str, Any], seed: int, task: str = "binary"
) -> Pipeline:
    """Raw declared columns in, class probabilities (or numbers, for regression) out: the same object serves
    online."""
    dates = schema.columns_of_type("date")
    numeric = schema.columns_of_type("numeric", "integer", "boolean")
    numeric += [name for column in dates for name in date_part_columns(column)]
    categorical = schema.columns_of_type("categorical")
    # features.FeatureMatrix: what ColumnTransformer([("numeric", Pipeline([MedianImputer(), StandardScaler()]),
    # numeric), ("categorical", CategoryOneHot(), categorical)]) computed (exact medians, most-frequent imputation
    # and one-hot on integer codes), written into one C-ordered float64 matrix instead of column selections,
    # conversions and a final stack, each a copy of the data.
    preprocess = FeatureMatrix(numeric=numeric, categorical=categorical, scale=model_type in _SCALED)
    return Pipeline(
        [
            ("dates", DateParts(dates)),
            ("preprocess", preprocess),
            ("model", _estimator(model_type, hyperparameters, seed, task)),
        ]
    )


def features_and_target(
    frame: pd.DataFrame, schema: DatasetSchema, task: str | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """The feature columns and the target as the task holds it: binary int64 0/1, regression float64, multiclass
    the labels as they are (never cast: they may be text). ``task`` None: the target as stored."""
    missing = [c for c in [*schema.feature_names, schema.target] if c not in frame.columns]
    if missing:
        raise TrainError(f"processed data lacks column(s) {missing}; was it produced with this dataset_schema?")
    features = frame[schema.feature_names].copy()
    for column in schema.columns_of_type("boolean", "integer"):
        # As floats, integers and booleans (0/1) can carry a missing value to the imputer at serving time;
        # the model's signature then says "double" for them, so the endpoint accepts null.
        features[column] = features[column].astype("float64")
    return features, target_as(frame[schema.target], task)


def target_as(target: pd.Series, task: str | None) -> pd.Series:
    """The target as ``task`` holds it (see :func:`features_and_target`)."""
    dtype = {"binary": "int64", "regression": "float64"}.get(task or "")
    return target if dtype is None else target.astype(dtype)


def task_of(config: PipelineConfig, target: pd.Series) -> str:
    """The config's task; while it is still ``auto`` (a config not resolved by the ETL, e.g. outside the DAG), what
    the processed target column says, by the rule the ETL applies (``tasks.decide_task``)."""
    if config.task != "auto":
        return config.task
    task = task_of_target(target)
    log.warning("the config's task is auto (not resolved by the ETL): the processed target says %s", task)
    return task


@dataclass(frozen=True)
class _Split:
    """The seeded train/held-out split every candidate of a run shares (stratified for classification)."""

    task: str
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
    dag_id: str | None = None,
    task_id: str | None = None,
    map_index: int | None = -1,
) -> TrainResult:
    """Fit one candidate, evaluate it on the held-out split, log everything to MLflow. Idempotent per run and
    candidate. ``candidate`` defaults to the config's only candidate. ``pipeline_run_id`` (the Airflow run id),
    ``dag_id``, ``task_id`` and ``map_index`` (None or -1: not mapped) name the Airflow task instance training it:
    tags of the MLflow run, with a link back (``airflow.run_url``) where the Airflow UI's address is configured."""
    candidate = _chosen(config, candidate)
    origin = AirflowOrigin(dag_id, pipeline_run_id, task_id, -1 if map_index is None else map_index)
    out_dir = DataLayout.of(config.data_dir).models(run) / candidate.name
    if (out_dir / RECORD_FILE).exists():
        return TrainResult(**read_json(out_dir / RECORD_FILE))

    signing_key()  # without the key no model can be signed: refuse before the costly fit
    started = time.perf_counter()
    split = _split(config, processed_data_path)
    pipeline = _fit(config, candidate, split)
    metrics = evaluate(pipeline, split.x_test, split.y_test, split.task)
    classes = json_classes(pipeline)
    tags = _run_tags(
        config,
        candidate,
        run=run,
        split=split,
        metrics=metrics,
        classes=classes,
        origin=origin,
        data_sha256=data_sha256,
        processed_data_path=processed_data_path,
    )
    with atomic_directory(out_dir) as tmp:
        _write_holdout(tmp, config.dataset_schema, split, metrics)
        mlflow_run_id, model_uri, signed = _log_to_mlflow(
            config, candidate, run, tags, pipeline, split, metrics, holdout_path=out_dir / HOLDOUT_FILE
        )
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
            task=split.task,
            classes=classes,
        )
        (tmp / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _run_tags(
    config: PipelineConfig,
    candidate: Candidate,
    *,
    run: str,
    split: _Split,
    metrics: dict[str, Any],
    classes: list[Any],
    origin: AirflowOrigin,
    data_sha256: str,
    processed_data_path: str,
) -> dict[str, str]:
    """The MLflow run's tags: what it was trained on and by, its task and classes, the Airflow task instance (with
    a link back) and a description a reviewer reads first."""
    tags = {
        "data_sha256": data_sha256,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pipeline_run": run,
        "airflow_run_id": origin.run_id or run,
        "processed_data_path": processed_data_path,
        "model_type": candidate.ml_model_type,
        "candidate": candidate.name,
        "task": split.task,
        **_classes_tag(classes),
        **_positive_label_tag(split.task, config.dataset_schema.positive_label),
        **airflow_tags(config, origin),
    }
    return tags | description_tag(
        description(
            candidate,
            task=split.task,
            run=run,
            origin=origin,
            airflow_url=tags.get("airflow.run_url"),
            scores=_scores_text(metrics, config.validation_metric),
        )
    )


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
    features, stored = features_and_target(read_processed(processed_data_path, schema), schema)
    task = task_of(config, stored)
    target = target_as(stored, task)
    classification = task in CLASSIFICATION
    if target.nunique() < 2:
        what = "a single class" if classification else "a single value"
        raise TrainError(f"the target {schema.target!r} has {what} in {processed_data_path}; cannot train")
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            features,
            target,
            test_size=config.test_size,
            random_state=config.random_state,
            stratify=target if classification else None,
        )
    except ValueError as exc:  # e.g. a class with a single row cannot be in both parts of a stratified split
        counts = target.value_counts()
        raise TrainError(
            f"cannot split {len(target)} rows ({task}, test_size {config.test_size}) of {processed_data_path}: {exc}"
            + (f" (rarest classes: {counts.tail(3).to_dict()})" if classification else "")
        ) from exc
    return _Split(task, x_train, x_test, y_train, y_test)


def _fit(config: PipelineConfig, candidate: Candidate, split: _Split) -> Pipeline:
    pipeline = build_pipeline(
        config.dataset_schema, candidate.ml_model_type, candidate.hyperparameters, config.random_state, split.task
    )
    pipeline.fit(split.x_train, split.y_train)
    estimator = pipeline[-1]
    if "n_jobs" in estimator.get_params():
        # Fit on every core, but predict on one: a forest's threads add up tree probabilities in whatever order
        # they finish, so parallel predictions differ in the last bits from call to call. Scores on the same
        # holdout (the champion gate, the smoke test, the serving fast path's bit-for-bit check) must not.
        estimator.set_params(n_jobs=1)
    return pipeline


# MLflow keeps a tag of up to 8000 characters; a longer list of classes is in the run's classes.json only.
_MAX_CLASSES_TAG = 5000


POSITIVE_LABEL_TAG = "positive_label"


def _positive_label_tag(task: str, positive_label: str | None) -> dict[str, str]:
    """Binary models predict 0/1: the tag says which source label 1 is (validation compares it with the
    champion's, so a flipped positive class is never scored as if it were the same problem)."""
    return {POSITIVE_LABEL_TAG: positive_label} if task == "binary" and positive_label is not None else {}


def _classes_tag(classes: list[Any]) -> dict[str, str]:
    text = json.dumps(classes)
    return {"classes": text} if classes and len(text) <= _MAX_CLASSES_TAG else {}


def _scalar(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if isinstance(value, float)}


def _scores_text(metrics: dict[str, Any], first: str | None) -> str:
    """``accuracy 0.8512, f1 0.7000, ...``: the held-out scores, the judging metric first."""
    scores = _scalar(metrics)
    names = sorted(scores, key=lambda name: (name != first, name))
    return ", ".join(f"{name} {scores[name]:.4f}" for name in names) or "none"


def _labelled(schema: DatasetSchema, features: pd.DataFrame, target: pd.Series) -> pd.DataFrame:
    """Features and target in one frame, as the held-out rows are stored (``holdout.parquet``): the categorical
    columns as text, as they are read elsewhere."""
    return features.assign(**_text_columns(schema, features), **{schema.target: target.to_numpy()}).reset_index(
        drop=True
    )


def read_processed(path: str | Path, schema: DatasetSchema) -> pd.DataFrame:
    """The processed Parquet as the train stage fits it: the categorical columns (dictionary-encoded text in the
    file) as pandas Categoricals, decoded once per distinct value instead of into one Python string per row
    (about 3x faster to read), and one-hot encoded from their integer codes (features.CategoryOneHot)."""
    return pd.read_parquet(path, read_dictionary=schema.columns_of_type("categorical"))


def _text_columns(schema: DatasetSchema, features: pd.DataFrame) -> dict[str, np.ndarray]:
    """The categorical columns :func:`read_processed` typed, as object text with None where missing: what the
    plain ``pd.read_parquet`` gives (the holdout file, the logged datasets and the input example keep that form)."""
    columns = {}
    for name in schema.columns_of_type("categorical"):
        if name in features.columns and isinstance(features[name].dtype, pd.CategoricalDtype):
            typed = features[name].array
            text = np.append(np.asarray(typed.categories, dtype=object), None).take(typed.codes)  # -1: None
            columns[name] = text
    return columns


def _write_holdout(directory: Path, schema: DatasetSchema, split: _Split, metrics: dict[str, Any]) -> None:
    """The held-out rows (validation scores the champion on exactly these) and the full metrics."""
    _labelled(schema, split.x_test, split.y_test).to_parquet(directory / HOLDOUT_FILE, index=False)
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def _log_to_mlflow(
    config: PipelineConfig,
    candidate: Candidate,
    run: str,
    tags: dict[str, str],
    pipeline: Pipeline,
    split: _Split,
    metrics: dict[str, Any],
    *,
    holdout_path: Path,
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
        model_params = pipeline.named_steps["model"].get_params()
        params = run_params(config, candidate, split.task, len(json_classes(pipeline)), model_params)
        mlflow.log_params({**params, "n_train": len(split.x_train), "n_test": len(split.x_test)})
        log_datasets(
            config,
            training=_labelled(config.dataset_schema, split.x_train, split.y_train),
            holdout=_labelled(config.dataset_schema, split.x_test, split.y_test),
            training_source=tags["processed_data_path"],
            holdout_source=str(holdout_path),
            data_sha256=tags["data_sha256"],
        )
        mlflow.log_metrics(_scalar(metrics))
        mlflow.log_dict(metrics, "metrics.json")
        if split.task in CLASSIFICATION:
            mlflow.log_dict({"task": split.task, "classes": json_classes(pipeline)}, "classes.json")
        example = split.x_train.head(5)
        example = example.assign(**_text_columns(config.dataset_schema, example))
        signature = infer_signature(example, pipeline.predict(example))
        info = log_sklearn_model(pipeline, signature=signature, input_example=example, name=MODEL_ARTIFACT)
    signed_tags = client.get_run(mlflow_run.info.run_id).data.tags
    return mlflow_run.info.run_id, info.model_uri, signed_tags


def load_holdout(path: str | Path, schema: DatasetSchema, task: str | None = None) -> tuple[pd.DataFrame, pd.Series]:
    return features_and_target(pd.read_parquet(path), schema, task)
