"""Deploy stage: register the candidate, move the champion alias to it, make the endpoint load it, and prove
the endpoint answers exactly like the offline model. Any failure moves the alias back."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import mlflow
import numpy as np
from mlflow import MlflowClient

from mlpipeline.config import PipelineConfig
from mlpipeline.payload import json_rows
from mlpipeline.registry import champion_version, load_sklearn_model, use_tracking
from mlpipeline.stages.train import TrainResult, load_holdout
from mlpipeline.stages.validate import ValidationDecision
from mlpipeline.storage import DataLayout, atomic_write_json

RECORD_FILE = "deploy.json"


class DeployError(RuntimeError):
    """The new model could not be put live; the champion alias was left at (or moved back to) the old one."""


@dataclass(frozen=True)
class DeployResult:
    model_name: str
    version: str
    previous_version: str | None
    alias: str
    serving_url: str
    smoke_test_rows: int
    max_probability_difference: float
    deployed_at: str
    record_path: str
    # Training data of the model this one replaced: the reference that monitoring measures drift against.
    reference_data_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _register(client: MlflowClient, config: PipelineConfig, candidate: TrainResult, run: str) -> str:
    """Register the candidate once: re-running deploy for the same run reuses the version it created."""
    existing = client.search_model_versions(
        f"name = '{config.registered_model_name}' and run_id = '{candidate.mlflow_run_id}'"
    )
    if existing:
        return str(max(int(v.version) for v in existing))
    version = mlflow.register_model(
        candidate.model_uri,
        config.registered_model_name,
        tags={"pipeline_run": run, "data_sha256": candidate.data_sha256, "model_type": candidate.model_type},
    )
    return str(version.version)


def _wait_for_version(http: httpx.Client, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = http.post("/reload")
            if response.status_code == 200 and str(response.json().get("version")) == version:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise DeployError(f"the endpoint did not start serving version {version} within {timeout:.0f} s ({last})")


def _smoke_test(http: httpx.Client, config: PipelineConfig, candidate: TrainResult, version: str) -> tuple[int, float]:
    features, _ = load_holdout(candidate.holdout_path, config.dataset_schema)
    features = features.head(config.smoke_test_rows)
    offline = load_sklearn_model(f"models:/{config.registered_model_name}/{version}")
    expected_labels = offline.predict(features)
    expected_probabilities = offline.predict_proba(features)[:, 1]
    response = http.post("/predict", json={"rows": json_rows(features)})
    if response.status_code != 200:
        raise DeployError(f"smoke test: /predict answered HTTP {response.status_code}: {response.text[:500]}")
    body = response.json()
    if str(body.get("model_version")) != version:
        raise DeployError(f"smoke test: endpoint answered with version {body.get('model_version')}, not {version}")
    labels = np.asarray(body["predictions"])
    probabilities = np.asarray(body["probabilities"], dtype=float)
    mismatched = int((labels != expected_labels).sum())
    difference = float(np.max(np.abs(probabilities - expected_probabilities))) if len(probabilities) else 0.0
    if mismatched or difference > 1e-6:
        raise DeployError(
            f"smoke test: the endpoint disagrees with the offline model on {mismatched} of {len(features)} "
            f"held-out rows (max probability difference {difference:.3g})"
        )
    return len(features), difference


def deploy(config: PipelineConfig, *, run: str, candidate: TrainResult, decision: ValidationDecision) -> DeployResult:
    if not decision.deploy:
        # Guard in the library too: a caller that skips the branch must still not ship a rejected model.
        raise DeployError("validation rejected this candidate: " + "; ".join(decision.reasons))

    client = use_tracking(config)
    version = _register(client, config, candidate, run)
    previous = champion_version(client, config)
    previous_version = None if previous is None else str(previous.version)
    if previous_version == version:
        # Re-run of this deploy after the alias already moved: keep the recorded predecessor.
        previous_version = (
            client.get_model_version(config.registered_model_name, version).tags.get("previous_champion") or None
        )

    client.set_registered_model_alias(config.registered_model_name, config.champion_alias, version)
    try:
        with httpx.Client(base_url=config.serving_url, timeout=config.serving_timeout_seconds) as http:
            _wait_for_version(http, version, config.serving_timeout_seconds)
            rows, difference = _smoke_test(http, config, candidate, version)
    except Exception as exc:
        _roll_back(client, config, previous_version)
        cause = exc if isinstance(exc, DeployError) else f"deploying version {version} failed ({exc!r})"
        raise DeployError(f"{cause}; the {config.champion_alias!r} alias was moved back to {previous_version}") from exc

    deployed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    client.set_model_version_tag(config.registered_model_name, version, "deployed_at", deployed_at)
    client.set_model_version_tag(config.registered_model_name, version, "previous_champion", previous_version or "")
    record = DataLayout.of(config.data_dir).run_records(run) / RECORD_FILE
    reference = None
    if previous_version:
        previous_run = client.get_model_version(config.registered_model_name, previous_version).run_id
        reference = client.get_run(previous_run).data.tags.get("processed_data_path") if previous_run else None
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
        reference_data_path=reference,
    )
    atomic_write_json(record, result.to_dict())
    return result


def _roll_back(client: MlflowClient, config: PipelineConfig, previous_version: str | None) -> None:
    if previous_version:
        client.set_registered_model_alias(config.registered_model_name, config.champion_alias, previous_version)
    else:
        client.delete_registered_model_alias(config.registered_model_name, config.champion_alias)
    # Best effort: the endpoint's poller would also notice, this just makes it immediate.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{config.serving_url}/reload", timeout=config.serving_timeout_seconds)
