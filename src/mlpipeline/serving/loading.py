"""Loading one registered model version: download, verify and load, metadata, warm-up, fast path; and predicting
with it.

The task a version serves comes from the (signed) model itself, never from a registry tag: a regressor answers
numbers, a classifier with two classes answers labels and P(positive class), one with more answers labels and
every class's probability."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import math
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.serving.fastpath import (
    FAST_PATH_MAX_ROWS,
    NOT_VERIFIED,
    FastPathStatus,
    FastPipeline,
    fast_path_off,
    verify_fast_path,
)
from mlpipeline.serving.schema import InputError, InputSchema

log = logging.getLogger(__name__)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """A numpy scalar as the Python scalar JSON can carry."""
    return value.item() if isinstance(value, np.generic) else value


# binary: P(positive class) per row; multiclass: {class label as text: probability} per row; regression: None.
Probabilities = list[float] | list[dict[str, float]] | None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """An immutable, fully loaded model version: the unit that is swapped atomically."""

    name: str
    version: str
    alias: str
    run_id: str | None
    model: Any
    schema: InputSchema
    classes: tuple[Any, ...]
    positive_index: int
    metrics: dict[str, float | None]
    trained_at: str | None
    data_fingerprint: str | None
    source: str | None
    loaded_at: str

    # How labels are derived; see prediction_plan().
    preprocess: Any = None
    final_step: Any = None
    labels_are_argmax: bool = True
    # The numpy equivalent of the pipeline for small requests, if it reproduced the sklearn path at load time.
    fast_path: FastPathStatus = NOT_VERIFIED
    # binary / multiclass / regression (see model_task); classes is empty for regression.
    task: str = "binary"

    @property
    def fast(self) -> FastPipeline | None:
        return self.fast_path.pipeline

    @functools.cached_property
    def class_values(self) -> list[Any]:
        """The classes as JSON values (what ``predictions`` holds); empty for a regressor."""
        return [plain(c) for c in self.classes]

    @functools.cached_property
    def class_keys(self) -> list[str]:
        """The classes as text: the keys of a multiclass answer's probabilities."""
        return [str(c) for c in self.class_values]

    def predict_rows(self, rows: Sequence[Any]) -> tuple[list[Any], Probabilities]:
        """Validate JSON rows and predict them: the /predict code path."""
        fast = self.fast_path.pipeline
        if fast is None or len(rows) > FAST_PATH_MAX_ROWS:
            return self.predict(self.schema.frame(rows))
        labels, proba = fast.predict(self.schema.arrays(rows))
        return self._answer(labels, proba)

    def predict(self, frame: pd.DataFrame) -> tuple[list[Any], Probabilities]:
        if self.task == "regression":
            return self._answer(self.model.predict(frame), None)
        if self.labels_are_argmax:
            # One model call: for these estimators predict() *is* the argmax of predict_proba().
            return self._answer(None, self.model.predict_proba(frame))
        # Unknown final estimator (e.g. a tuned decision threshold): ask it for labels, but preprocess once.
        features = self.preprocess.transform(frame) if self.preprocess is not None else frame
        return self._answer(self.final_step.predict(features), self.final_step.predict_proba(features))

    def _answer(self, labels: Any, proba: np.ndarray | None) -> tuple[list[Any], Probabilities]:
        """(predictions, probabilities) as JSON values from the model's outputs; ``labels`` None: the argmax."""
        if proba is None:  # a regressor: its numbers are the predictions
            return np.asarray(labels, dtype=np.float64).tolist(), None
        if labels is None:
            labels = np.asarray(self.classes, dtype=object)[np.argmax(proba, axis=1)]
        predictions = [plain(v) for v in labels]
        if self.task == "binary":
            return predictions, proba[:, self.positive_index].tolist()
        keys = self.class_keys
        return predictions, [dict(zip(keys, row, strict=True)) for row in proba.tolist()]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "model_uri": f"models:/{self.name}/{self.version}",
            "source": self.source,
            "run_id": self.run_id,
            "metrics": self.metrics,
            "trained_at": self.trained_at,
            "data_fingerprint": self.data_fingerprint,
            "input_schema": self.schema.to_list(),
            "task": self.task,
            "classes": self.class_values,
            # Only a binary model has one class whose probability /predict answers.
            "positive_class": plain(self.classes[self.positive_index]) if self.task == "binary" else None,
            "loaded_at": self.loaded_at,
            "fast_path": self.fast_path.to_dict(),
        }


def prediction_plan(model: Any) -> tuple[Any, Any, bool]:
    """(preprocessing, final estimator, whether predict() == argmax(predict_proba()) for it; False for any
    regressor)."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    argmax_estimators = (
        RandomForestClassifier,
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        GradientBoostingClassifier,
        DecisionTreeClassifier,
        # Binary: decision_function > 0 <=> P(class 1) > 0.5, and a tie picks class 0 both ways; multiclass: the
        # probabilities are the softmax of the decision function, which keeps its order.
        LogisticRegression,
    )
    if isinstance(model, Pipeline) and len(model.steps) > 1:
        preprocess, final = model[:-1], model.steps[-1][1]
    else:
        preprocess, final = None, model
    # Exact type, not isinstance: a subclass may override predict().
    return preprocess, final, type(final) in argmax_estimators


# --------------------------------------------------------------------------------------------------------------
# load_model_version and its steps.
# --------------------------------------------------------------------------------------------------------------


def _download(client: Any, tracking_uri: str, model_version: Any, what: str) -> tuple[Any, InputSchema, Any]:
    """(verified and loaded model, input schema from its signature, input example or None) of one version.

    Nothing of the download is read beyond the MLmodel file before its signed digest checks out, and the model
    loads from skops with the reviewed trusted types only (integrity.load_verified_model): a refused version
    raises IntegrityError and the server keeps the model it serves."""
    import mlflow.artifacts
    from mlflow.models import Model

    from mlpipeline.integrity import load_verified_model

    artifact_uri = client.get_model_version_download_uri(model_version.name, model_version.version)
    # The signed digest lives on the training run; no run, no signature (the version is refused).
    tags = client.get_run(model_version.run_id).data.tags if model_version.run_id else {}
    # A private local copy pinned to this version: the alias may move meanwhile, and the process-global MLflow
    # tracking URI is not involved (several apps with different registries can live in one process).
    with tempfile.TemporaryDirectory(prefix="mlpipeline-serving-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri)
        model = load_verified_model(local, tags, what)
        meta = Model.load(local)
        schema = InputSchema.from_signature(meta.signature)
        try:
            example = meta.load_input_example(local)
        except Exception as exc:  # an unreadable example should not block an otherwise good model
            log.warning("model %s: could not read the input example (%s)", what, exc)
            example = None
    return model, schema, example


def model_task(model: Any, what: str) -> tuple[str, tuple[Any, ...]]:
    """(task, classes) of a loaded model: a regressor serves numbers (no classes); a classifier its classes, two
    (binary) or more (multiclass). Raises if a classifier cannot serve probabilities for at least two classes."""
    from sklearn.base import is_regressor

    if is_regressor(model):
        if not hasattr(model, "predict"):
            raise ValueError(f"model {what} has no predict")
        return "regression", ()
    if not hasattr(model, "predict_proba"):
        raise ValueError(f"model {what} has no predict_proba")
    classes = tuple(getattr(model, "classes_", ()))
    if len(classes) < 2:
        raise ValueError(f"model {what} does not expose at least two classes_")
    return ("binary" if len(classes) == 2 else "multiclass"), classes


def _training_run(client: Any, model_version: Any, what: str) -> tuple[dict[str, float | None], dict[str, str]]:
    """(metrics, tags) of the run that trained the version, the version's own tags taking precedence."""
    tags: dict[str, str] = dict(model_version.tags or {})
    run_id = model_version.run_id or None
    if not run_id:
        return {}, tags
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # metadata is informative only; the model itself is loaded
        log.warning("model %s: could not read training run %s (%s)", what, run_id, exc)
        return {}, tags
    # NaN metrics (e.g. roc_auc of a one-class holdout) are not valid JSON: report them as null.
    metrics = {k: (v if math.isfinite(v) else None) for k, v in run.data.metrics.items()}
    return metrics, {**run.data.tags, **tags}


def _positive_index(classes: tuple[Any, ...]) -> int:
    """scikit-learn's convention, which the ETL's 0/1 target follows: the last of the sorted classes (1 / True).
    Never a registry tag: tags are not covered by the model's signature, so anyone who can write to MLflow could
    otherwise flip which probability is served. Only binary answers use it (-1 for a regressor)."""
    return len(classes) - 1


def _example_rows(example: Any) -> list[dict[str, Any]] | None:
    try:
        return example.to_dict(orient="records") if isinstance(example, pd.DataFrame) else None
    except Exception:
        return None


def _warmed_up(loaded: LoadedModel, example_rows: list[dict[str, Any]] | None, what: str) -> LoadedModel:
    """The version after answering its input example through our own input path, with its fast path decided."""
    if not example_rows:
        reason = "the model was logged without a readable input example to verify it against"
        return dataclasses.replace(loaded, fast_path=fast_path_off(what, reason))
    try:
        frame = loaded.schema.frame(example_rows)
    except InputError as exc:
        log.warning("model %s: input example does not fit the signature (%s)", what, exc)
        reason = "the model's input example does not fit its signature"
        return dataclasses.replace(loaded, fast_path=fast_path_off(what, reason))
    # A version that cannot answer its own example must not serve (this raises).
    predictions, _ = loaded.predict(frame)
    if len(predictions) != len(example_rows):
        raise ValueError(f"model {what} answered {len(predictions)} prediction(s) for {len(example_rows)} row(s)")
    if loaded.task == "regression" and not all(isinstance(p, float) for p in predictions):
        raise ValueError(f"model {what} is a regressor but does not answer one number per row")
    return dataclasses.replace(loaded, fast_path=verify_fast_path(loaded, example_rows, what))


def load_model_version(client: Any, tracking_uri: str, name: str, version: str, alias: str) -> LoadedModel:
    """Download, verify, load and warm up one registered version. Raises on any problem (IntegrityError for a
    refused model); nothing is half-applied."""
    what = f"{name} version {version}"
    model_version = client.get_model_version(name, version)
    model, schema, example = _download(client, tracking_uri, model_version, what)
    task, classes = model_task(model, what)
    metrics, tags = _training_run(client, model_version, what)
    preprocess, final_step, labels_are_argmax = prediction_plan(model)
    loaded = LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        run_id=model_version.run_id or None,
        model=model,
        schema=schema,
        classes=classes,
        positive_index=_positive_index(classes),
        metrics=metrics,
        trained_at=tags.get("trained_at"),
        data_fingerprint=tags.get("data_sha256"),
        source=model_version.source,
        loaded_at=utc_now(),
        preprocess=preprocess,
        final_step=final_step,
        labels_are_argmax=labels_are_argmax,
        task=task,
    )
    loaded = _warmed_up(loaded, _example_rows(example), what)
    return dataclasses.replace(loaded, loaded_at=utc_now())
