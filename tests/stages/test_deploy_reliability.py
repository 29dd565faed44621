"""Deploy never loses the champion: a compare-and-set on the alias, retries after a crash at any step, rollbacks
that leave other deploys alone or fail loudly; the same model is registered once; unchanged data is recognised;
a tie keeps the champion. Against a real MLflow registry (SQLite) and a live model server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlpipeline.config import ConfigError, PipelineConfig
from mlpipeline.dev.localstack import free_port
from mlpipeline.registry import (
    DEPLOY_NOTE_TAG,
    DEPLOY_STATUS_TAG,
    DEPLOYED_AT_TAG,
    PREVIOUS_CHAMPION_TAG,
    TRAINING_FINGERPRINT_TAG,
)
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages import deploy as deploy_stage
from mlpipeline.stages.deploy import (
    INTENT_FILE,
    ChampionMovedError,
    DeployError,
    RollbackError,
    deploy,
)
from mlpipeline.stages.train import TrainResult, train
from mlpipeline.stages.validate import DATA_CHECK_FILE, ValidationDecision, beats_champion, check_data, validate
from mlpipeline.storage import DataLayout, read_json
from tests.pipeline_data import Workspace, workspace

MODEL = "churn_classifier"
DATA = "d1sha"  # the crawl's sha256 of the data both models were trained on
B_PARAMS = {"max_iter": 30}
# Deploy-side tags a previous test may have left on version B.
DEPLOY_TAGS = (DEPLOY_STATUS_TAG, PREVIOUS_CHAMPION_TAG, DEPLOYED_AT_TAG, DEPLOY_NOTE_TAG)


class Killed(BaseException):
    """The task process dying at this point: no ``except Exception`` (no rollback) runs."""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("deploy-reliability"))


@pytest.fixture(scope="module")
def serving_url(ws: Workspace) -> Iterator[str]:
    with serve_in_thread(create_app(tracking_uri=ws.tracking_uri, model_name=MODEL, poll_seconds=0)) as url:
        yield url


@pytest.fixture(scope="module")
def models(ws: Workspace, serving_url: str) -> dict[str, Any]:
    """Version A deployed as the first champion, and candidate B (other parameters, same data) not yet deployed."""
    processed = ws.processed("d1").data_path
    a = train(ws.config(), run="a", processed_data_path=processed, data_sha256=DATA)
    b = train(ws.config(hyperparameters=B_PARAMS), run="b", processed_data_path=processed, data_sha256=DATA)
    first = deploy(ws.config(serving_url=serving_url), run="a", candidate=a, decision=_approved(a, None))
    return {"a": a, "b": b, "A": first.version}


def _approved(candidate: TrainResult, champion: str | None) -> ValidationDecision:
    """What validate_model hands deploy when the candidate passed against ``champion``."""
    return ValidationDecision(
        deploy=True,
        metric="roc_auc",
        candidate_score=candidate.metrics["roc_auc"],
        threshold=0.0,
        champion_version=champion,
        champion_score=None,
        candidate=candidate.candidate,
    )


def _client(ws: Workspace) -> MlflowClient:
    return MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)


def _champion(ws: Workspace) -> str | None:
    aliases = _client(ws).get_registered_model(MODEL).aliases
    return str(aliases["champion"]) if "champion" in aliases else None


def _served(serving_url: str) -> str:
    return str(httpx.get(f"{serving_url}/model").json()["version"])


def _b_config(ws: Workspace, serving_url: str, **overrides: Any) -> PipelineConfig:
    return ws.config(hyperparameters=B_PARAMS, serving_url=serving_url, **overrides)


def _version_of(ws: Workspace, candidate: TrainResult) -> str | None:
    found = _client(ws).search_model_versions(f"name = '{MODEL}' and run_id = '{candidate.mlflow_run_id}'")
    return str(found[0].version) if found else None


def _versions(ws: Workspace) -> set[str]:
    return {str(v.version) for v in _client(ws).search_model_versions(f"name = '{MODEL}'")}


@pytest.fixture
def a_is_champion(ws: Workspace, serving_url: str, models: dict[str, Any]) -> str | None:
    """Each test starts from A as the champion (and served) and B's deploy history wiped; returns B's version, if
    registered."""
    client = _client(ws)
    client.set_registered_model_alias(MODEL, "champion", models["A"])
    httpx.post(f"{serving_url}/reload", headers=deploy_stage._serving_headers()).raise_for_status()
    b_version = _version_of(ws, models["b"])
    if b_version is not None:
        tags = client.get_model_version(MODEL, b_version).tags
        for tag in DEPLOY_TAGS:
            if tag in tags:
                client.delete_model_version_tag(MODEL, b_version, tag)
    return b_version


def _after(function: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
    """``function``, killed right after its first call for which ``when`` holds."""
    state = {"killed": False}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        if not state["killed"] and when(*args, **kwargs):
            state["killed"] = True
            raise Killed(function.__name__)
        return result

    return wrapper


def _deployed_tag(*args: Any, **kwargs: Any) -> bool:
    return args[3].get(DEPLOY_STATUS_TAG) == "deployed"


CRASH_POINTS = {
    "registered": ("_register", None),
    "predecessor recorded": ("_record_intent", None),
    "alias moved": ("_move_alias", None),
    "smoke test passed": ("_smoke_test", None),
    "deployed tag set": ("_tag", _deployed_tag),
}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_retry_after_a_crash_at_any_step_ends_on_the_smoke_tested_candidate(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str, point: str, monkeypatch
) -> None:
    name, when = CRASH_POINTS[point]
    monkeypatch.setattr(deploy_stage, name, _after(getattr(deploy_stage, name), when or (lambda *a, **k: True)))
    config, run, decision = _b_config(ws, serving_url), f"crash-{name}", _approved(models["b"], models["A"])

    with pytest.raises(Killed):
        deploy(config, run=run, candidate=models["b"], decision=decision)
    b_version = _version_of(ws, models["b"])
    assert _champion(ws) in (models["A"], b_version)  # never deleted, never a third version

    result = deploy(config, run=run, candidate=models["b"], decision=decision)  # Airflow's retry
    assert (_champion(ws), _served(serving_url)) == (result.version, result.version)
    assert result.previous_version == models["A"]
    tags = _client(ws).get_model_version(MODEL, result.version).tags
    assert tags[DEPLOY_STATUS_TAG] == "deployed" and tags[PREVIOUS_CHAMPION_TAG] == models["A"]
    intent = read_json(DataLayout.of(config.data_dir).run_records(run) / INTENT_FILE)
    assert (intent["version"], intent["previous_version"]) == (result.version, models["A"])


def test_a_crash_mid_rollback_then_a_retry_ends_on_a_smoke_tested_version(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str, monkeypatch
) -> None:
    def endpoint_down(*args: Any, **kwargs: Any) -> None:
        raise DeployError("the endpoint did not start serving", retryable=True)

    with monkeypatch.context() as patch:
        patch.setattr(deploy_stage, "_wait_for_version", endpoint_down)
        patch.setattr(deploy_stage, "_restore_alias", _after(deploy_stage._restore_alias))
        with pytest.raises(Killed):
            deploy(
                _b_config(ws, serving_url),
                run="crash-rollback",
                candidate=models["b"],
                decision=_approved(models["b"], models["A"]),
            )
    assert _champion(ws) == models["A"]  # restored before the crash

    result = deploy(
        _b_config(ws, serving_url),
        run="crash-rollback",
        candidate=models["b"],
        decision=_approved(models["b"], models["A"]),
    )
    assert (_champion(ws), _served(serving_url), result.previous_version) == (
        result.version,
        result.version,
        models["A"],
    )


def test_the_alias_moves_only_if_it_still_points_where_validation_saw_it(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str
) -> None:
    # Validation saw no champion; since then A became champion (another run's deploy).
    with pytest.raises(ChampionMovedError, match=r"moved from None .* to " + models["A"]) as raised:
        deploy(_b_config(ws, serving_url), run="stale", candidate=models["b"], decision=_approved(models["b"], None))
    assert not raised.value.retryable
    assert _champion(ws) == models["A"] and _served(serving_url) == models["A"]
    assert _client(ws).get_model_version(MODEL, _version_of(ws, models["b"])).tags[DEPLOY_STATUS_TAG] == "rejected"


def test_a_rollback_leaves_a_version_another_deploy_put_live_alone(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str, monkeypatch
) -> None:
    import mlflow

    other = str(mlflow.register_model(models["a"].model_uri, MODEL).version)  # another run's deploy, meanwhile

    def another_deploy_then_timeout(*args: Any, **kwargs: Any) -> None:
        _client(ws).set_registered_model_alias(MODEL, "champion", other)
        raise DeployError("the endpoint did not start serving", retryable=True)

    monkeypatch.setattr(deploy_stage, "_wait_for_version", another_deploy_then_timeout)
    with pytest.raises(DeployError, match=f"left on {other} \\(moved there by another deploy"):
        deploy(
            _b_config(ws, serving_url),
            run="overlap",
            candidate=models["b"],
            decision=_approved(models["b"], models["A"]),
        )
    assert _champion(ws) == other
    tags = _client(ws).get_model_version(MODEL, _version_of(ws, models["b"])).tags
    assert tags[DEPLOY_STATUS_TAG] == "rolled_back" and "did not start serving" in tags[DEPLOY_NOTE_TAG]


def test_a_rollback_that_cannot_reach_mlflow_fails_loudly(
    ws: Workspace, models: dict[str, Any], a_is_champion: str, monkeypatch
) -> None:
    moves: list[str] = []
    real_move = MlflowClient.set_registered_model_alias

    def mlflow_dies_after_the_move(self: MlflowClient, name: str, alias: str, version: str) -> None:
        moves.append(version)
        if len(moves) > 1:
            raise MlflowException("API request failed: Connection refused")
        real_move(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", mlflow_dies_after_the_move)
    unreachable = _b_config(ws, f"http://127.0.0.1:{free_port()}", serving_timeout_seconds=1)
    with pytest.raises(RollbackError, match="ROLLBACK FAILED") as raised:
        deploy(unreachable, run="no-mlflow", candidate=models["b"], decision=_approved(models["b"], models["A"]))
    message = str(raised.value)
    assert moves[0] == _version_of(ws, models["b"])
    assert f"may still point at version {moves[0]}" in message and "did NOT pass" in message
    assert not raised.value.retryable  # a human must hear of it now, not after the retries
    assert _champion(ws) == moves[0] != models["A"]  # what the message warns about


def test_an_endpoint_that_stays_down_rolls_back_to_the_champion_and_may_be_retried(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str
) -> None:
    unreachable = _b_config(ws, f"http://127.0.0.1:{free_port()}", serving_timeout_seconds=1)
    with pytest.raises(DeployError, match=f"moved back to {models['A']}") as raised:
        deploy(unreachable, run="down", candidate=models["b"], decision=_approved(models["b"], models["A"]))
    assert raised.value.retryable
    assert _champion(ws) == models["A"] and _served(serving_url) == models["A"]


def test_the_same_model_trained_again_is_not_registered_twice(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str
) -> None:
    config = _b_config(ws, serving_url)
    first = deploy(config, run="same-1", candidate=models["b"], decision=_approved(models["b"], models["A"]))
    again = train(
        ws.config(hyperparameters=B_PARAMS),
        run="b-again",
        processed_data_path=models["b"].processed_data_path,
        data_sha256=DATA,
    )
    assert again.mlflow_run_id != models["b"].mlflow_run_id
    before = _versions(ws)
    second = deploy(config, run="same-2", candidate=again, decision=_approved(again, first.version))
    assert second.version == first.version and _versions(ws) == before


def test_a_tie_keeps_the_champion_unless_a_tolerance_says_otherwise(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str
) -> None:
    a = models["a"]  # the champion itself, as a candidate: the same score on the same rows
    tie = validate(ws.config(accuracy_threshold=0.5, validation_metric="roc_auc"), run="tie", candidate=a)
    assert not tie.deploy and tie.champion_score == pytest.approx(a.metrics["roc_auc"])
    assert f"= champion v{models['A']}" in tie.reasons[-1] and "the champion stays" in tie.reasons[-1]
    tolerant = ws.config(accuracy_threshold=0.5, validation_metric="roc_auc", champion_tolerance=0.01)
    assert validate(tolerant, run="tie", candidate=a).deploy


@pytest.mark.parametrize(
    ("settings", "score", "champion", "replaces"),
    [
        ({}, 0.80, 0.80, False),
        ({}, 0.8001, 0.80, True),
        ({"champion_margin": 0.01}, 0.805, 0.80, False),
        ({"champion_margin": 0.01}, 0.811, 0.80, True),
        ({"champion_tolerance": 0.01}, 0.795, 0.80, True),
        ({"champion_tolerance": 0.01}, 0.789, 0.80, False),
    ],
)
def test_beats_champion(ws: Workspace, settings: dict, score: float, champion: float, replaces: bool) -> None:
    assert beats_champion(ws.config(**settings), score, champion) is replaces


def test_margin_and_tolerance_cannot_both_be_set(ws: Workspace) -> None:
    with pytest.raises(ConfigError, match=r"set champion_tolerance \(may be worse\) or champion_margin"):
        ws.config(champion_tolerance=0.01, champion_margin=0.01)


def test_check_data_knows_when_nothing_changed(
    ws: Workspace, serving_url: str, models: dict[str, Any], a_is_champion: str
) -> None:
    config = ws.config()  # the config A was trained and deployed with (where things live aside)
    assert _client(ws).get_model_version(MODEL, models["A"]).tags[TRAINING_FINGERPRINT_TAG]  # stamped by deploy
    before = check_data(config, run="check-0", data_sha256=DATA)
    assert before.unchanged and before.champion_version == models["A"]
    assert "nothing is trained or registered" in before.reason
    recorded = json.loads(Path(before.record_path).read_text())
    assert recorded["unchanged"] is True and Path(before.record_path).name == DATA_CHECK_FILE

    assert not check_data(config, run="check-1", data_sha256="other").unchanged
    judged_otherwise = check_data(ws.config(accuracy_threshold=0.9), run="check-2", data_sha256=DATA)
    assert not judged_otherwise.unchanged and "differ" in judged_otherwise.reason
    other_candidates = check_data(ws.config(hyperparameters=B_PARAMS), run="check-3", data_sha256=DATA)
    assert not other_candidates.unchanged
