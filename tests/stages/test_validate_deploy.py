"""validate + deploy against a real MLflow registry (SQLite) and a live model server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from mlpipeline.dev.localstack import free_port
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages.deploy import DeployError, deploy
from mlpipeline.stages.train import TrainResult, train
from mlpipeline.stages.validate import ValidationDecision, validate
from tests.pipeline_data import Workspace, workspace

MODEL = "churn_classifier"
# A deliberately weak model (a stump).
WEAK = {"max_iter": 1, "max_depth": 1, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def serving_url(ws: Workspace) -> Iterator[str]:
    app = create_app(tracking_uri=ws.tracking_uri, model_name=MODEL, poll_seconds=0)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def candidates(ws: Workspace) -> dict[str, TrainResult]:
    """A good model and a deliberately weak one (a stump), trained on the same data and split."""
    processed = ws.processed("d1")
    good = train(ws.config(), run="good", processed_data_path=processed.data_path, data_sha256="a")
    weak_config = ws.config(hyperparameters=WEAK)
    weak = train(weak_config, run="weak", processed_data_path=processed.data_path, data_sha256="a")
    assert weak.metrics["roc_auc"] < good.metrics["roc_auc"]
    return {"good": good, "weak": weak}


def _registry(ws: Workspace) -> MlflowClient:
    return MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)


def _champion(ws: Workspace) -> str | None:
    aliases = _registry(ws).get_registered_model(MODEL).aliases if _registered(ws) else {}
    return str(aliases["champion"]) if "champion" in aliases else None


def _registered(ws: Workspace) -> bool:
    return bool(_registry(ws).search_registered_models(f"name = '{MODEL}'"))


def test_deploy_flow_threshold_champion_rollback(ws: Workspace, serving_url: str, candidates: dict) -> None:
    config = ws.config(serving_url=serving_url, accuracy_threshold=0.5, validation_metric="roc_auc")
    good, weak = candidates["good"], candidates["weak"]

    # 1. Above reach: rejected on the threshold alone, and deploy refuses to ship it anyway.
    strict = ws.config(serving_url=serving_url, accuracy_threshold=0.999, validation_metric="roc_auc")
    rejected = validate(strict, run="good", candidate=good)
    assert not rejected.deploy
    assert rejected.reasons[0].startswith("candidate roc_auc") and "< threshold 0.9990" in rejected.reasons[0]
    assert "no champion yet" in rejected.reasons[1]
    with pytest.raises(DeployError, match="validation rejected"):
        deploy(strict, run="good", candidate=good, decision=rejected)
    assert _champion(ws) is None

    # 2. First model: the threshold alone decides; deploy moves the alias and the endpoint serves it.
    decision = validate(config, run="good", candidate=good)
    assert decision.deploy and decision.champion_version is None
    assert json.loads(Path(decision.record_path).read_text())["deploy"] is True
    first = deploy(config, run="good", candidate=good, decision=decision)
    assert first.previous_version is None
    assert _champion(ws) == first.version
    assert httpx.get(f"{serving_url}/model").json()["version"] == first.version
    assert first.smoke_test_rows == config.smoke_test_rows and first.max_probability_difference <= 1e-6

    # Re-running deploy for the same run reuses the registered version.
    again = deploy(config, run="good", candidate=good, decision=decision)
    assert again.version == first.version

    # 3. A weaker candidate clears the threshold but loses to the champion on the same held-out rows.
    lenient = ws.config(serving_url=serving_url, accuracy_threshold=0.0, validation_metric="roc_auc")
    versus = validate(lenient, run="weak", candidate=weak)
    assert not versus.deploy
    assert versus.champion_version == first.version
    assert versus.champion_score == pytest.approx(good.metrics["roc_auc"])
    assert f"< champion v{first.version}" in versus.reasons[1]

    # 4. The endpoint cannot be reached: the alias is moved back to the previous champion.
    forced = ValidationDecision(**{**versus.to_dict(), "deploy": True})
    unreachable = ws.config(
        serving_url=f"http://127.0.0.1:{free_port()}",
        serving_timeout_seconds=2,
        validation_metric="roc_auc",
        hyperparameters=WEAK,  # the run's config is the one its candidate was trained with
    )
    with pytest.raises(DeployError, match=f"moved back to {first.version}"):
        deploy(unreachable, run="weak", candidate=weak, decision=forced)
    assert _champion(ws) == first.version
    assert httpx.get(f"{serving_url}/model").json()["version"] == first.version
