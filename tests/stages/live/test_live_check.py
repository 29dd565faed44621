"""Live monitoring on a real champion: churn data through the real ETL and training, deployed by the real deploy
stage to a real model server (which binds the version's reference), then live traffic answered by that server and
logged into the prediction log's tables (SQLite). Unchanged traffic is healthy; drift in a slice of the features
or wrong answers (feedback) is degraded with the reasons; too little traffic gets no verdict."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sqlalchemy import func, select

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.prediction_store import engine_for, feedback, monitoring_checks, monitoring_drift, predictions
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages.deploy import deploy
from mlpipeline.stages.live import (
    DEGRADED,
    HEALTHY,
    NOT_ENOUGH_TRAFFIC,
    NothingToMonitor,
    ReferenceError,
    check_live_traffic,
    purge_prediction_log,
)
from mlpipeline.stages.live.alert import degraded_email
from mlpipeline.stages.live.reference import (
    REFERENCE_TAG,
    VALIDATION_METRIC_TAG,
    VALIDATION_SCORE_TAG,
    champion_reference,
)
from mlpipeline.stages.train import train
from mlpipeline.stages.validate import ValidationDecision
from mlpipeline.storage import read_json
from tests.pipeline_data import workspace
from tests.stages.live.support import HOUR, churn_rows, refused_requests, send_traffic

MODEL = "live_churn"
NOW = 1_900_000_000.0  # a fixed "now" (2030): the window is [NOW - 24 h, NOW)
DRIFTED = {"age", "monthly_charges", "contract"}  # what churn_data's drift=True moves clearly (PSI > 0.2)


@dataclass(frozen=True)
class Champion:
    tracking_uri: str
    artifacts: str
    serving_url: str
    version: str
    run_id: str
    accuracy: float
    model_dir: Path


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champion]:
    root = tmp_path_factory.mktemp("live")
    ws = workspace(root)
    app = create_app(tracking_uri=ws.tracking_uri, model_name=MODEL, poll_seconds=0)
    with serve_in_thread(app) as url:
        config = ws.config(registered_model_name=MODEL, serving_url=url, serving_timeout_seconds=30)
        processed = ws.processed("live-train", rows=3000, seed=7)
        candidate = train(config, run="live-train", processed_data_path=processed.data_path, data_sha256="live")
        score = candidate.metrics["accuracy"]
        decision = ValidationDecision(
            deploy=True, metric="accuracy", candidate_score=score, threshold=None, champion_version=None,
            champion_score=None, candidate=candidate.candidate, task="binary",
        )  # fmt: skip
        result = deploy(config, run="live-train", candidate=candidate, decision=decision)
        model_dir = Path(candidate.holdout_path).parent
        yield Champion(
            ws.tracking_uri, str(root / "artifacts"), url, result.version, candidate.mlflow_run_id, score, model_dir
        )


def _config(champion: Champion, tmp_path: Path, **settings: object) -> PipelineConfig:
    """The settings as the monitoring DAG reads them from Variables: not resolved (task auto, no metric)."""
    return build_config(
        {
            "data_dir": str(tmp_path / "data"),
            "mlflow_tracking_uri": champion.tracking_uri,
            "registered_model_name": MODEL,
            "prediction_log_url": f"sqlite:///{tmp_path / 'log.db'}",
            **settings,
        }
    )


def _traffic(config: PipelineConfig, champion: Champion, rows: int, seed: int, **options: object) -> None:
    drift = bool(options.pop("drift", False))
    features, actual = churn_rows(rows, seed, drift=drift)
    if options.pop("wrong", False):
        actual = [1 - value for value in actual]
    assert config.prediction_log_url
    start = float(options.pop("start", NOW - 6 * HOUR))
    send_traffic(config.prediction_log_url, champion.serving_url, features, actual, start=start, **options)  # type: ignore[arg-type]


def _count(config: PipelineConfig, table: object, check_id: str) -> int:
    assert config.prediction_log_url
    engine = engine_for(config.prediction_log_url)
    with engine.connect() as db:
        count = db.execute(select(func.count()).select_from(table).where(table.c.check_id == check_id)).scalar_one()  # type: ignore[attr-defined]
    engine.dispose()
    return int(count)


def test_deploy_binds_the_versions_own_reference(champion: Champion, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    tags = client.get_model_version(MODEL, champion.version).tags
    assert tags[REFERENCE_TAG] == f"runs:/{champion.run_id}/reference"
    assert (tags[VALIDATION_METRIC_TAG], float(tags[VALIDATION_SCORE_TAG])) == ("accuracy", champion.accuracy)
    assert sorted(p.name for p in (champion.model_dir / "reference").iterdir()) == [
        "features.parquet",
        "predictions.parquet",
        "profile.json",
    ]
    reference = champion_reference(client, _config(champion, tmp_path))
    assert reference is not None and reference.version == champion.version
    assert (reference.task, reference.metric, reference.validation_score) == ("binary", "accuracy", champion.accuracy)
    assert 2500 < len(reference.features) <= 3000  # the clean training rows (ETL dropped duplicates and bad rows)
    assert set(reference.predictions.unique()) <= {0, 1}


def test_unchanged_traffic_is_healthy_and_recorded_once_per_check(champion: Champion, tmp_path: Path) -> None:
    config = _config(champion, tmp_path)
    _traffic(config, champion, 600, seed=21)
    # Not in the window: drifted traffic two days ago, and traffic of another version now.
    _traffic(config, champion, 300, seed=22, drift=True, start=NOW - 48 * HOUR)
    _traffic(config, champion, 300, seed=23, drift=True, version="999")
    refused_requests(config.prediction_log_url or "", MODEL, 12, start=NOW - 2 * HOUR)

    check = check_live_traffic(config, check_id="hourly-1", now=NOW)
    assert check.verdict == HEALTHY, check.reasons
    assert (check.model_version, check.predictions, check.with_feedback) == (champion.version, 600, 600)
    assert check.drift is not None and check.drift["drifted_features"] == []
    assert check.live_score is not None and abs(check.live_score - champion.accuracy) < config.live_score_tolerance
    # Requests count for the model whichever version answered: 12 + 6 answered now, 12 refused.
    assert check.requests["requests"] == 30 and check.requests["error_rate"] == pytest.approx(12 / 30)
    assert 0 < check.requests["latency_p50_ms"] <= check.requests["latency_p95_ms"]
    record = read_json(check.record_path)
    assert record["verdict"] == HEALTHY and Path(check.record_path).parent == tmp_path / "data" / "monitoring"

    again = check_live_traffic(config, check_id="hourly-1", now=NOW)  # a retry of the same check
    assert again.verdict == HEALTHY
    assert _count(config, monitoring_checks, "hourly-1") == 1
    assert _count(config, monitoring_drift, "hourly-1") == 12 + 1  # every feature and the answers
    client = MlflowClient(tracking_uri=champion.tracking_uri)
    history = client.get_metric_history(champion.run_id, "live_accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(int(NOW), round(check.live_score, 6))]
    assert client.get_run(champion.run_id).data.tags["live_last_verdict"] == HEALTHY


def test_drift_in_a_slice_of_features_is_degraded(champion: Champion, tmp_path: Path) -> None:
    config = _config(champion, tmp_path)
    _traffic(config, champion, 600, seed=31, drift=True)
    check = check_live_traffic(config, check_id="drifted", now=NOW)
    assert check.verdict == DEGRADED
    assert check.drift is not None
    drifted = set(check.drift["drifted_features"])
    assert drifted >= DRIFTED, drifted
    assert "region" not in drifted and "payment_method" not in drifted
    assert any(reason.startswith("drift in numeric feature 'age'") for reason in check.reasons), check.reasons
    assert {row["feature"] for row in check.top_drift[: len(drifted)]} == drifted

    email = degraded_email(read_json(check.record_path), retrain="requested")
    assert email.subject.startswith(f"[model_monitoring] {MODEL} v{champion.version} degraded: ")
    for name in DRIFTED:
        assert f"<td>{name}</td>" in email.html
    assert "600 logged" in email.html and "live" in email.html


def test_wrong_outcomes_degrade_the_live_score(champion: Champion, tmp_path: Path) -> None:
    config = _config(champion, tmp_path)
    _traffic(config, champion, 600, seed=41, wrong=True)
    check = check_live_traffic(config, check_id="wrong", now=NOW)
    assert check.verdict == DEGRADED
    assert check.drift is not None and check.drift["drifted_features"] == []
    assert check.live_score is not None and check.live_score < 0.5 < champion.accuracy
    assert len(check.reasons) == 1 and check.reasons[0].startswith("live accuracy ")
    assert "worse than the validation score" in check.reasons[0]


def test_too_little_traffic_gets_no_verdict(champion: Champion, tmp_path: Path) -> None:
    config = _config(champion, tmp_path)
    _traffic(config, champion, 150, seed=51, drift=True)
    check = check_live_traffic(config, check_id="quiet", now=NOW)
    assert check.verdict == NOT_ENOUGH_TRAFFIC
    assert check.drift is None and check.live_score is None
    assert "fewer than monitoring_min_samples (200)" in check.reasons[0]
    assert _count(config, monitoring_checks, "quiet") == 1


def test_feedback_below_the_minimum_gives_drift_but_no_score(champion: Champion, tmp_path: Path) -> None:
    config = _config(champion, tmp_path)
    features, _ = churn_rows(400, 61)
    send_traffic(config.prediction_log_url or "", champion.serving_url, features, None, start=NOW - HOUR)
    check = check_live_traffic(config, check_id="no-feedback", now=NOW)
    assert check.verdict == HEALTHY and check.live_score is None and check.with_feedback == 0
    assert any("no live score" in note for note in check.notes)


def test_purge_deletes_only_what_retention_no_longer_keeps(champion: Champion, tmp_path: Path) -> None:
    config = _config(champion, tmp_path, prediction_log_retention_days=7)
    _traffic(config, champion, 100, seed=71, start=NOW - 10 * 24 * HOUR)
    _traffic(config, champion, 100, seed=72, start=NOW - 2 * 24 * HOUR)
    result = purge_prediction_log(config, now=NOW)
    assert (result.requests, result.predictions, result.feedback) == (2, 100, 100)
    engine = engine_for(config.prediction_log_url or "")
    with engine.connect() as db:
        assert db.execute(select(func.count()).select_from(predictions)).scalar_one() == 100
        assert db.execute(select(func.count()).select_from(feedback)).scalar_one() == 100
    engine.dispose()
    assert purge_prediction_log(config, now=NOW).predictions == 0  # idempotent


def test_nothing_to_monitor_without_a_log_or_a_champion(champion: Champion, tmp_path: Path) -> None:
    with pytest.raises(NothingToMonitor, match="prediction_log_url is not set"):
        check_live_traffic(_config(champion, tmp_path, prediction_log_url=None), check_id="off", now=NOW)
    with pytest.raises(NothingToMonitor, match="no 'champion' version of 'nobody'"):
        check_live_traffic(_config(champion, tmp_path, registered_model_name="nobody"), check_id="none", now=NOW)
    with pytest.raises(ValueError, match="check_id must be 1 to 64 characters"):
        check_live_traffic(_config(champion, tmp_path), check_id="x" * 65, now=NOW)


def test_a_champion_without_a_reference_is_refused_with_what_to_do(champion: Champion, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    name = "live_unbound"
    client.create_registered_model(name)
    source = client.get_model_version(MODEL, champion.version).source
    version = client.create_model_version(name, source, champion.run_id).version
    client.set_registered_model_alias(name, "champion", version)
    with pytest.raises(ReferenceError, match=r"has no 'reference_uri' tag.*Deploy a new champion"):
        check_live_traffic(_config(champion, tmp_path, registered_model_name=name), check_id="old", now=NOW)
