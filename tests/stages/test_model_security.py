"""Attacks on the models behind the alias: whoever can write to MLflow (artifacts, tags, versions, aliases) but does
not hold the signing key. Each is refused by the model server, validate and deploy, and nothing changes: the served
version, the champion alias, no validation record, and no payload ever runs (its marker file never appears)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
import pytest
import skops.io
import yaml
from mlflow import MlflowClient
from sklearn.preprocessing import FunctionTransformer

from mlpipeline.config import PipelineConfig
from mlpipeline.integrity import DIGEST_TAG, SIGNATURE_TAG, SIGNING_KEY_ENV, IntegrityError, signature_tags
from mlpipeline.registry import load_sklearn_model, use_tracking
from mlpipeline.serving import ModelServer
from mlpipeline.stages.deploy import deploy
from mlpipeline.stages.etl import EtlResult
from mlpipeline.stages.train import TrainResult, build_pipeline, load_holdout, train
from mlpipeline.stages.validate import RECORD_FILE, ValidationDecision, validate
from mlpipeline.storage import DataLayout
from tests.pipeline_data import Workspace, workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("model_security"))


@pytest.fixture(scope="module")
def processed(ws: Workspace) -> EtlResult:
    return ws.processed("sec", rows=800)


@pytest.fixture(scope="module")
def good(ws: Workspace, processed: EtlResult) -> TrainResult:
    return train(ws.config(), run="sec-good", processed_data_path=processed.data_path, data_sha256="x")


@dataclass
class Scene:
    """A registry whose champion is a good, signed version, and a model server serving it."""

    config: PipelineConfig
    client: MlflowClient
    server: ModelServer
    champion: str
    marker: Path

    def point_alias_at(self, version: str) -> None:
        """The attacker's move: MLflow lets anyone with write access set the alias."""
        self.client.set_registered_model_alias(self.config.registered_model_name, self.config.champion_alias, version)

    def alias(self) -> str:
        name, alias = self.config.registered_model_name, self.config.champion_alias
        return str(self.client.get_model_version_by_alias(name, alias).version)

    def register(self, source: str, run_id: str) -> str:
        name = self.config.registered_model_name
        return str(self.client.create_model_version(name, source=source, run_id=run_id).version)


@pytest.fixture
def scene(ws: Workspace, good: TrainResult, tmp_path: Path) -> Iterator[Scene]:
    config = ws.config(serving_url="http://127.0.0.1:9", serving_timeout_seconds=2)
    client = use_tracking(config)
    champion = str(mlflow.register_model(good.model_uri, config.registered_model_name).version)
    client.set_registered_model_alias(config.registered_model_name, config.champion_alias, champion)
    server = ModelServer(
        tracking_uri=ws.tracking_uri, model_name=config.registered_model_name, alias="champion", poll_seconds=0
    )
    assert server.refresh() and server.model is not None and server.model.version == champion
    yield Scene(config, client, server, champion, tmp_path / "payload-ran")


class _Payload:
    """Unpickling this creates ``marker``: what an attacker's model.pkl would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def _stored_copy(ws: Workspace, result: TrainResult, target: Path) -> Path:
    """The files of a logged model as the attacker can read them from the artifact store."""
    return Path(
        mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(target), tracking_uri=ws.tracking_uri)
    )


def _stored_location(scene: Scene, result: TrainResult) -> Path:
    return Path(scene.client.get_logged_model(result.model_uri.removeprefix("models:/")).artifact_location)


def _refused_everywhere(scene: Scene, good: TrainResult, version: str, message: str) -> None:
    """With the alias on ``version``: the server keeps serving the champion, validate refuses loudly, nothing moved."""
    scene.point_alias_at(version)
    assert scene.server.refresh() is False
    assert scene.server.model is not None and scene.server.model.version == scene.champion, "the old model serves"
    assert re.search(f"IntegrityError: .*version {version}.*{message}", scene.server.last_error)
    with pytest.raises(IntegrityError, match=f"model v{version} of {scene.config.registered_model_name}.*{message}"):
        validate(scene.config, run="sec-attack", candidate=good)
    assert not (DataLayout.of(scene.config.data_dir).run_records("sec-attack") / RECORD_FILE).exists()
    assert scene.alias() == version, "nothing re-pointed the alias behind the operator's back"
    assert not scene.marker.exists(), "the payload never ran"


def test_a_crafted_pickle_behind_the_alias_is_refused_and_never_unpickled(
    ws: Workspace, scene: Scene, good: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafted = _stored_copy(ws, good, tmp_path / "crafted")
    mlmodel = yaml.safe_load((crafted / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(serialization_format="cloudpickle", pickled_model="model.pkl")
    mlmodel["flavors"]["python_function"]["model_path"] = "model.pkl"
    (crafted / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (crafted / "model.pkl").write_bytes(pickle.dumps(_Payload(scene.marker)))
    # Registered under the good model's run: its tags hold a valid signature, of other files.
    version = scene.register(str(crafted), good.mlflow_run_id)
    _refused_everywhere(scene, good, version, "was saved with cloudpickle; loading it could execute")

    # The same payload dressed as skops: the MLmodel passes, the checksum does not; skops never opens it.
    mlmodel["flavors"]["sklearn"].update(serialization_format="skops", pickled_model="model.skops")
    (crafted / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    shutil.move(crafted / "model.pkl", crafted / "model.skops")
    _refused_everywhere(scene, good, scene.register(str(crafted), good.mlflow_run_id), "checksum mismatch")

    # Control: the artifact is live. MLflow's own loader, allowed to unpickle, runs it.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlmodel["flavors"]["sklearn"].update(serialization_format="cloudpickle", pickled_model="model.skops")
    (crafted / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    mlflow.sklearn.load_model(str(crafted)).close()
    assert scene.marker.exists()


def test_a_model_pickled_the_old_way_is_refused_and_the_champion_stays(
    ws: Workspace, scene: Scene, good: TrainResult, processed: EtlResult, tmp_path: Path
) -> None:
    """A version logged before models were saved with skops: refused with a message that says what to do."""
    features, target = load_holdout(processed.data_path, scene.config.dataset_schema)
    pipeline = build_pipeline(scene.config.dataset_schema, "logistic_regression", {}, 0).fit(features, target)
    with mlflow.start_run(experiment_id=scene.client.get_experiment_by_name("ml_pipeline").experiment_id) as run:
        info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="cloudpickle")
    version = scene.register(info.model_uri, run.info.run_id)
    _refused_everywhere(scene, good, version, r"was saved with cloudpickle; .*refused .* Re-train it")


def test_a_skops_file_with_an_untrusted_type_is_refused_even_when_signed(
    ws: Workspace, scene: Scene, good: TrainResult, tmp_path: Path
) -> None:
    crafted = _stored_copy(ws, good, tmp_path / "untrusted")
    skops.io.dump(FunctionTransformer(func=os.system), crafted / "model.skops")
    # Signed with the real key (a tricked trainer, or a stolen key): the allow-list still stands.
    run = scene.client.create_run(scene.client.get_experiment_by_name("ml_pipeline").experiment_id)
    for key, value in signature_tags(crafted).items():
        scene.client.set_tag(run.info.run_id, key, value)
    version = scene.register(str(crafted), run.info.run_id)
    _refused_everywhere(scene, good, version, r"outside the reviewed trusted list .*posix\.system")


def test_artifact_bytes_changed_after_signing_are_refused(
    ws: Workspace, scene: Scene, good: TrainResult, processed: EtlResult
) -> None:
    other = train(ws.config(), run="sec-tampered", processed_data_path=processed.data_path, data_sha256="x")
    version = str(mlflow.register_model(other.model_uri, scene.config.registered_model_name).version)
    stored = _stored_location(scene, other)
    with (stored / "model.skops").open("ab") as file:  # in place, in the artifact store
        file.write(b"\0")
    _refused_everywhere(scene, good, version, "checksum mismatch, its files changed after they were signed")


@pytest.mark.parametrize("forgery", ["missing", "wrong key", "digest of the tampered files"])
def test_a_missing_or_forged_signature_is_refused(
    ws: Workspace, scene: Scene, good: TrainResult, processed: EtlResult, forgery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_name = f"sec-forged-{forgery.replace(' ', '-')}"
    other = train(ws.config(), run=run_name, processed_data_path=processed.data_path, data_sha256="x")
    version = str(mlflow.register_model(other.model_uri, scene.config.registered_model_name).version)
    if forgery == "missing":
        scene.client.delete_tag(other.mlflow_run_id, SIGNATURE_TAG)
        message = "has no signed digest"
    else:
        stored = _stored_location(scene, other)
        if forgery == "digest of the tampered files":
            skops.io.dump(FunctionTransformer(func=os.system), stored / "model.skops")
        monkeypatch.setenv(SIGNING_KEY_ENV, "the attacker's own key, long enough to be accepted")
        forged = signature_tags(stored)
        monkeypatch.undo()
        for key in (DIGEST_TAG, SIGNATURE_TAG):
            scene.client.set_tag(other.mlflow_run_id, key, forged[key])
        message = "signature of its recorded digest is wrong"
    _refused_everywhere(scene, good, version, message)


def test_deploy_refuses_a_tampered_candidate_before_the_alias_moves(
    ws: Workspace, scene: Scene, processed: EtlResult
) -> None:
    candidate = train(ws.config(), run="sec-deploy", processed_data_path=processed.data_path, data_sha256="x")
    stored = _stored_location(scene, candidate)
    (stored / "MLmodel").write_text((stored / "MLmodel").read_text() + "\n# tampered\n")
    decision = ValidationDecision(
        deploy=True,
        metric="accuracy",
        candidate_score=1.0,
        threshold=0.0,
        champion_version=scene.champion,
        champion_score=0.5,
    )
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        deploy(scene.config, run="sec-deploy", candidate=candidate, decision=decision)
    assert scene.alias() == scene.champion
    assert scene.server.refresh() and scene.server.model.version == scene.champion


def test_the_loader_needs_the_key_and_never_mlflows_pickle_switch(
    ws: Workspace, scene: Scene, good: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our loader refuses pickle whatever MLFLOW_ALLOW_PICKLE_DESERIALIZATION says, and does not need it set to
    load skops (MLflow's own loader, with it false, refuses every format): deployments may set it false."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    assert load_sklearn_model(good.model_uri, tracking_uri=ws.tracking_uri) is not None
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.sklearn.load_model(good.model_uri)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    with pytest.raises(IntegrityError, match=f"{SIGNING_KEY_ENV} is not set"):
        load_sklearn_model(good.model_uri, tracking_uri=ws.tracking_uri)
    assert scene.server.refresh(force=True) is False and scene.server.model.version == scene.champion
