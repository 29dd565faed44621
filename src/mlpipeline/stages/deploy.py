"""Deploy stage: register the candidate, move the champion alias to it, make the endpoint load it, and prove
the endpoint answers exactly like the offline model (labels and probabilities for a classifier, binary or
multiclass; numbers for a regressor). Any failure moves the alias back.

Moving the alias is a compare-and-set: the predecessor is the version validation compared against, recorded (run
record and registry tag) before the alias moves, and the alias moves only if it still points there; a rollback
touches the alias only if it still points at this deploy's version. So a retry at any step, or another run's
deploy in between, never loses the champion or leaves it on an untested version without saying so loudly.
Deploys are serialised by the DAG (a one-slot pool); these checks keep the rare overlap (a manual run) safe.

Before the alias moves, the version is bound to its own reference (:mod:`mlpipeline.stages.live.reference`: a
sample of its training features, its predictions on held-out rows, its validation metric and score), which live
monitoring compares the champion's traffic with."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.base import is_regressor

from mlpipeline.config import PipelineConfig
from mlpipeline.constants import SERVING_TOKEN_ENV
from mlpipeline.integrity import IntegrityError
from mlpipeline.payload import json_rows, json_value
from mlpipeline.registry import (
    CODE_VERSION_TAG,
    DATA_SHA256_TAG,
    DEPLOY_NOTE_TAG,
    DEPLOY_STATUS_TAG,
    DEPLOYED_AT_TAG,
    MODEL_FINGERPRINT_TAG,
    PREVIOUS_CHAMPION_TAG,
    TRAINING_FINGERPRINT_TAG,
    champion_version,
    code_version,
    filter_literal,
    find_same_model,
    load_sklearn_model,
    model_fingerprint,
    training_fingerprint,
    use_tracking,
)
from mlpipeline.stages.live.reference import bind_reference
from mlpipeline.stages.train import TrainResult, load_holdout
from mlpipeline.stages.validate import ValidationDecision
from mlpipeline.storage import DataLayout, atomic_write_json

log = logging.getLogger(__name__)

RECORD_FILE = "deploy.json"
# Written before the alias moves: which version goes live and which one it replaces.
INTENT_FILE = "deploy_intent.json"
# The endpoint must answer like the offline model: the same labels, and each probability (or a regressor's number,
# relative to its size above 1) within this; the two may differ in the last bits (BLAS paths), nothing more.
SMOKE_TOLERANCE = 1e-6


class DeployError(RuntimeError):
    """The new model could not be put live; the champion alias was left at (or moved back to) the old one.

    ``retryable``: whether running deploy again later may help (the endpoint or MLflow was unreachable), as
    opposed to a verdict a retry would repeat (rejected, disagreeing endpoint, champion moved)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChampionMovedError(DeployError):
    """The alias no longer points where validation saw it: the decision was made against another champion."""


class RollbackError(DeployError):
    """Moving the alias back failed: it may point at a version that did not pass its smoke test. Needs a human."""


@dataclass(frozen=True)
class DeployResult:
    model_name: str
    version: str
    previous_version: str | None
    alias: str
    serving_url: str
    smoke_test_rows: int
    # Largest endpoint-vs-offline difference of a probability (classifiers) or of a number (regressors, relative
    # to its size above 1) in the smoke test.
    max_probability_difference: float
    deployed_at: str
    record_path: str
    # Training data of the model this one replaced: the reference that monitoring measures drift against.
    reference_data_path: str | None
    # This version's own reference (its training profile, for live monitoring): an MLflow artifact URI.
    reference_profile_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _register(client: MlflowClient, config: PipelineConfig, candidate: TrainResult, run: str) -> str:
    """Register the candidate once: re-running deploy for the same run reuses the version it created, and so does
    a run that trained the very same model (same data, code and parameters) again."""
    fingerprint = model_fingerprint(config, candidate.candidate)
    existing = client.search_model_versions(
        f"name = {filter_literal(config.registered_model_name)} and run_id = {filter_literal(candidate.mlflow_run_id)}"
    ) or find_same_model(client, config.registered_model_name, candidate.data_sha256, fingerprint)
    if existing:
        return str(max(int(v.version) for v in existing))
    tags = {
        "pipeline_run": run,
        "model_type": candidate.model_type,
        "candidate": candidate.candidate,
        DATA_SHA256_TAG: candidate.data_sha256,
        MODEL_FINGERPRINT_TAG: fingerprint,
        CODE_VERSION_TAG: code_version(),
    }
    version = mlflow.register_model(candidate.model_uri, config.registered_model_name, tags=tags)
    return str(version.version)


def _serving_headers() -> dict[str, str]:
    token = os.environ.get(SERVING_TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _alias_target(client: MlflowClient, config: PipelineConfig) -> str | None:
    champion = champion_version(client, config)
    return None if champion is None else str(champion.version)


def _tag(client: MlflowClient, config: PipelineConfig, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(config.registered_model_name, version, key, value)


def _check_unmoved(client: MlflowClient, config: PipelineConfig, version: str, predecessor: str | None) -> bool:
    """True if the alias is where validation saw it (``predecessor``), False if it is on ``version`` already (a
    retry after the move, or the same model deployed by another run). Anything else: ChampionMovedError."""
    current = _alias_target(client, config)
    if current == version:
        return False
    if current == predecessor:
        return True
    reason = (
        f"the {config.champion_alias!r} alias moved from {predecessor} (the champion validation compared against) "
        f"to {current} since validation: version {version} is not deployed; the next run validates against the "
        "new champion"
    )
    _tag(client, config, version, {DEPLOY_STATUS_TAG: "rejected", DEPLOY_NOTE_TAG: reason[:500]})
    raise ChampionMovedError(reason)


def _record_intent(
    client: MlflowClient, config: PipelineConfig, run: str, version: str, predecessor: str | None
) -> None:
    """Before the alias moves: which version replaces which, in the run's records and on the version, so a retry
    (or a human) knows where to go back to whatever happens next."""
    atomic_write_json(
        DataLayout.of(config.data_dir).run_records(run) / INTENT_FILE,
        {
            "model_name": config.registered_model_name,
            "alias": config.champion_alias,
            "version": version,
            "previous_version": predecessor,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    tags = {
        PREVIOUS_CHAMPION_TAG: predecessor or "",
        DEPLOY_STATUS_TAG: "deploying",
        TRAINING_FINGERPRINT_TAG: training_fingerprint(config),
    }
    _tag(client, config, version, tags)


def _move_alias(client: MlflowClient, config: PipelineConfig, version: str, predecessor: str | None) -> None:
    """Compare-and-set: the alias moves to ``version`` only if it still points at ``predecessor``."""
    if _check_unmoved(client, config, version, predecessor):
        client.set_registered_model_alias(config.registered_model_name, config.champion_alias, version)


def _wait_for_version(http: httpx.Client, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = http.post("/reload")
            if response.status_code == 200 and str(response.json().get("version")) == version:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code in (401, 403) or "IntegrityError" in response.text:
                # A token or signing key that differs between the workers and the server: waiting or retrying
                # cannot fix it.
                raise DeployError(f"the endpoint refused version {version}: {last}", retryable=False)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise DeployError(
        f"the endpoint did not start serving version {version} within {timeout:.0f} s ({last})", retryable=True
    )


def _smoke_test(
    http: httpx.Client, config: PipelineConfig, candidate: TrainResult, version: str, offline: Any
) -> tuple[int, float]:
    features, _ = load_holdout(candidate.holdout_path, config.dataset_schema)
    features = features.head(config.smoke_test_rows)
    response = http.post("/predict", json={"rows": json_rows(features)})
    if response.status_code != 200:
        raise DeployError(
            f"smoke test: /predict answered HTTP {response.status_code}: {response.text[:500]}",
            retryable=response.status_code >= 500,
        )
    body = response.json()
    if str(body.get("model_version")) != version:
        raise DeployError(
            f"smoke test: endpoint answered with version {body.get('model_version')}, not {version}", retryable=True
        )
    mismatched, difference, what = _disagreement(offline, features, body)
    if mismatched or difference > SMOKE_TOLERANCE:
        raise DeployError(
            f"smoke test: the endpoint disagrees with the offline model on {mismatched} of {len(features)} "
            f"held-out rows (max {what} difference {difference:.3g})"
        )
    return len(features), difference


def _disagreement(offline: Any, features: pd.DataFrame, body: dict[str, Any]) -> tuple[int, float, str]:
    """(rows the endpoint answers differently from the offline model, the largest difference of a probability or
    of a regressor's number, which of the two). A classifier's rows differ by label, and its probabilities (of the
    positive class for binary, of each class for multiclass) by the largest difference; a regressor's rows differ
    by their number beyond SMOKE_TOLERANCE, relative to the number's size when that is above 1. Raises DeployError
    for an answer of the wrong shape."""
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(features):
        raise DeployError(f"smoke test: expected {len(features)} predictions, got {str(predictions)[:300]}")
    if is_regressor(offline):
        expected = np.asarray(offline.predict(features), dtype=float)
        got = _numbers(predictions, "a regressor's predictions")
        differences = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
        return int((~(differences <= SMOKE_TOLERANCE)).sum()), _largest(differences), "prediction"
    expected_labels = [json_value(label) for label in offline.predict(features)]
    wrong_label = np.array([got != want for got, want in zip(predictions, expected_labels, strict=True)])
    expected_probabilities = offline.predict_proba(features)
    classes = [json_value(c) for c in offline.classes_]
    probabilities = body.get("probabilities")
    if len(classes) == 2:  # binary: P(positive), the last class
        got = _numbers(probabilities, "the probabilities")[:, None]
        expected_probabilities = expected_probabilities[:, -1:]
    else:
        got = _class_probabilities(probabilities, [str(c) for c in classes])
    if got.shape != expected_probabilities.shape:
        raise DeployError(f"smoke test: expected {len(features)} probabilities, got {str(probabilities)[:300]}")
    differences = np.abs(got - expected_probabilities).max(axis=1, initial=0.0)
    return int(wrong_label.sum()), _largest(differences), "probability"


def _largest(differences: np.ndarray) -> float:
    return float(np.max(differences)) if len(differences) else 0.0


def _numbers(values: Any, what: str) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DeployError(f"smoke test: {what} must be a list of numbers, got {str(values)[:300]}")
    return np.asarray(values, dtype=float)


def _class_probabilities(rows: Any, keys: list[str]) -> np.ndarray:
    """A multiclass answer's probabilities ({class label as text: p} per row) as a matrix in the model's class
    order; DeployError if a row does not name exactly the model's classes."""
    if not isinstance(rows, list):
        raise DeployError(f"smoke test: expected the probabilities of each class, got {str(rows)[:300]}")
    for row in rows:
        if not isinstance(row, dict) or sorted(row) != sorted(keys):
            raise DeployError(
                f"smoke test: the endpoint's probabilities do not name the model's classes {keys[:20]}: "
                f"{str(row)[:300]}"
            )
    return _numbers([row[key] for row in rows for key in keys], "the probabilities").reshape(len(rows), len(keys))


def deploy(config: PipelineConfig, *, run: str, candidate: TrainResult, decision: ValidationDecision) -> DeployResult:
    """Put the validated candidate live (see the module's doc for why each step is safe to repeat)."""
    if not decision.deploy:
        # Guard in the library too: a caller that skips the branch must still not ship a rejected model.
        raise DeployError("validation rejected this candidate: " + "; ".join(decision.reasons))

    client = use_tracking(config)
    version = _register(client, config, candidate, run)
    # The champion validation compared against: the only version it is known to be safe to go back to.
    previous_version = decision.champion_version
    if _check_unmoved(client, config, version, previous_version):
        _record_intent(client, config, run, version, previous_version)

    offline = _load_offline(client, config, version)
    # The version's own reference (training profile, holdout predictions, validation score) is bound before it can
    # become champion: live monitoring of a champion always finds what to compare its traffic with.
    reference_uri = bind_reference(
        client,
        config,
        candidate=candidate,
        version=version,
        metric=decision.metric,
        score=decision.candidate_score,
        model=offline,
    )
    _move_alias(client, config, version, previous_version)
    try:
        with httpx.Client(
            base_url=config.serving_url, timeout=config.serving_timeout_seconds, headers=_serving_headers()
        ) as http:
            _wait_for_version(http, version, config.serving_timeout_seconds)
            rows, difference = _smoke_test(http, config, candidate, version, offline)
    except Exception as exc:
        cause = exc if isinstance(exc, DeployError) else f"deploying version {version} failed ({exc!r})"
        where = _roll_back(client, config, version, previous_version, str(cause))
        retryable = exc.retryable if isinstance(exc, DeployError) else True
        raise DeployError(f"{cause}; the {config.champion_alias!r} alias was {where}", retryable=retryable) from exc

    deployed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    note = f"live since {deployed_at}, replacing {previous_version or 'no champion'}"
    _tag(client, config, version, {DEPLOYED_AT_TAG: deployed_at, DEPLOY_STATUS_TAG: "deployed", DEPLOY_NOTE_TAG: note})
    record = DataLayout.of(config.data_dir).run_records(run) / RECORD_FILE
    result = DeployResult(
        model_name=config.registered_model_name,
        version=version,
        previous_version=previous_version,
        alias=config.champion_alias,
        serving_url=config.serving_url,
        smoke_test_rows=rows,
        max_probability_difference=difference,
        deployed_at=deployed_at,
        record_path=str(record),
        reference_data_path=_training_data_of(client, config, previous_version),
        reference_profile_uri=reference_uri,
    )
    atomic_write_json(record, result.to_dict())
    return result


def _load_offline(client: MlflowClient, config: PipelineConfig, version: str) -> Any:
    """The offline model the endpoint must agree with, verified and loaded before the alias moves: a refused model
    (IntegrityError: unsafe format, tampered files) fails the deploy at once, with nothing changed."""
    try:
        return load_sklearn_model(f"models:/{config.registered_model_name}/{version}")
    except IntegrityError as exc:
        _tag(client, config, version, {DEPLOY_STATUS_TAG: "rejected", DEPLOY_NOTE_TAG: f"refused: {exc}"[:500]})
        raise


def _training_data_of(client: MlflowClient, config: PipelineConfig, version: str | None) -> str | None:
    """The processed data ``version`` was trained on (the post-deploy drift check's reference), if known."""
    if not version:
        return None
    run_id = client.get_model_version(config.registered_model_name, version).run_id
    return client.get_run(run_id).data.tags.get("processed_data_path") if run_id else None


def _roll_back(
    client: MlflowClient, config: PipelineConfig, version: str, previous_version: str | None, failure: str
) -> str:
    """Put the alias back where validation saw it, if it still points at ``version`` (else another deploy moved it
    since: theirs to keep), and tag ``version`` rolled_back. Returns where the alias is now. RollbackError if the
    registry cannot be reached: then the alias may still point at ``version``, which failed its smoke test."""
    try:
        where = _restore_alias(client, config, version, previous_version)
    except Exception as exc:
        raise RollbackError(
            f"{failure}; ROLLBACK FAILED ({type(exc).__name__}: {exc}): the {config.champion_alias!r} alias may "
            f"still point at version {version}, which did NOT pass its smoke test. Point it back at "
            f"{previous_version or 'nothing (delete it)'} by hand, or re-run deploy once MLflow answers."
        ) from exc
    try:
        if previous_version != version:  # else it was, and stays, the champion
            _tag(client, config, version, {DEPLOY_STATUS_TAG: "rolled_back", DEPLOY_NOTE_TAG: failure[:500]})
    except Exception:  # the alias is safe; a missing tag only costs a line of history
        log.warning("could not tag version %s rolled_back", version, exc_info=True)
    # Best effort: the endpoint's poller would also notice, this just makes it immediate.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{config.serving_url}/reload", timeout=config.serving_timeout_seconds, headers=_serving_headers())
    return where


def _restore_alias(client: MlflowClient, config: PipelineConfig, version: str, previous_version: str | None) -> str:
    current = _alias_target(client, config)
    if current != version:
        return f"left on {current} (moved there by another deploy since; not touched)"
    if previous_version == version:
        return f"left on {version}, which was the champion before this deploy"
    if previous_version is None:
        # There was no champion when validation ran: going back means no champion, not an untested one.
        client.delete_registered_model_alias(config.registered_model_name, config.champion_alias)
        return "removed (there was no champion before)"
    client.set_registered_model_alias(config.registered_model_name, config.champion_alias, previous_version)
    return f"moved back to {previous_version}"
