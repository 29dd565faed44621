"""Live traffic for monitoring: a trained churn run's held-out rows, a drifted slice, sent to a real model server
with its prediction log on (SQLite), and the outcomes posted to /feedback with the serving token."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Table, func, select

from mlpipeline.dev.traffic import (
    DriftSpec,
    TrafficError,
    TrafficPlan,
    apply_drift,
    drift_columns,
    main,
    run_holdout,
    traffic_for_run,
)
from mlpipeline.prediction_store import engine_for, feedback, predictions
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages.deploy import deploy
from mlpipeline.stages.train import train
from mlpipeline.stages.validate import validate
from mlpipeline.storage import DataLayout, atomic_write_json
from tests.pipeline_data import Workspace, workspace

RUN = "traffic-1"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("traffic"))


@pytest.fixture(scope="module")
def records(ws: Workspace) -> Path:
    """A run that trained and validated, its records laid out as the DAG leaves them."""
    processed = ws.processed(RUN, rows=1500)
    config = ws.config()
    best = train(config, run=RUN, processed_data_path=processed.data_path, data_sha256="traffic")
    validate(config, run=RUN, candidate=best)
    path = DataLayout.of(config.data_dir).run_records(RUN)
    atomic_write_json(path / "config.resolved.json", json.loads(config.model_dump_json()))
    atomic_write_json(path / "train.json", best.to_dict())
    return path


@pytest.fixture(scope="module")
def served(ws: Workspace, records: Path) -> Iterator[tuple[str, str]]:
    """A model server with the prediction log on, the run's model deployed to it; (its URL, the log's URL)."""
    from mlpipeline.stages.train import TrainResult
    from mlpipeline.stages.validate import ValidationDecision

    log_url = f"sqlite:///{ws.root / 'predictions.db'}"
    config = ws.config()
    app = create_app(
        tracking_uri=ws.tracking_uri,
        model_name=config.registered_model_name,
        poll_seconds=0,
        prediction_log_url=log_url,
    )
    with serve_in_thread(app) as url:
        decision = ValidationDecision(**json.loads((records / "validate.json").read_text()))
        best = TrainResult(**json.loads((records / "train.json").read_text()))
        deploy(config.model_copy(update={"serving_url": url}), run=RUN, candidate=best, decision=decision)
        yield url, log_url


def test_the_drifted_slice_moves_numeric_features_within_their_bounds(records: Path) -> None:
    config, features, labels = run_holdout(records)
    assert len(features) == len(labels) > 100
    spec = DriftSpec(count=2, shift=2.0, fraction=0.25)
    columns = drift_columns(config.dataset_schema, features, spec)
    numeric = {c.name: c for c in config.dataset_schema.resolved_columns() if c.type in ("numeric", "integer")}
    assert len(columns) == 2 and set(columns) <= set(numeric)
    drifted, count = apply_drift(features, config.dataset_schema, columns, spec, features)
    assert count == round(len(features) * 0.25)
    head, tail = slice(0, len(features) - count), slice(len(features) - count, None)
    pd.testing.assert_frame_equal(drifted.iloc[head], features.iloc[head], check_dtype=False)
    for name in columns:
        before, after = features[name].iloc[tail].astype(float), drifted[name].iloc[tail]
        assert after.mean() > before.mean() + features[name].std(), f"{name} moved by about 2 standard deviations"
        column = numeric[name]
        assert column.max is None or after.max() <= column.max
        if column.type == "integer":
            assert (after.dropna() == after.dropna().round()).all()
    untouched = [c for c in features.columns if c not in columns]
    pd.testing.assert_frame_equal(drifted[untouched], features[untouched])

    with pytest.raises(ValueError, match="are not features of the model"):
        drift_columns(config.dataset_schema, features, DriftSpec(columns=("no_such_column",)))
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        DriftSpec(fraction=1.5)


def _count(log_url: str, table: Table, request_ids: list[str], expected: int, timeout: float = 30.0) -> int:
    """Rows of these requests in a prediction log table once the server's writer caught up (it writes off the
    request path). The deploy's smoke test was logged too: only this traffic's requests count."""
    engine = engine_for(log_url)
    deadline = time.monotonic() + timeout
    query = select(func.count()).select_from(table).where(table.c.request_id.in_(request_ids))
    while True:
        with engine.connect() as connection:
            count = connection.execute(query).scalar_one()
        if count >= expected or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.2)


def test_traffic_is_logged_and_gets_feedback_some_of_it_wrong(records: Path, served: tuple[str, str]) -> None:
    url, log_url = served
    plan = TrafficPlan(rows=240, batch_size=16, feedback_fraction=0.8, wrong_fraction=0.3, seed=3)
    result = traffic_for_run(records, plan, serving_url=url)
    assert (result.rows_sent, result.requests) == (240, 15)
    assert result.rows_logged == 240 and len(result.request_ids) == 15, "every answer carries its request_id"
    assert result.drifted_rows == 120 and len(result.drifted_columns) == 3
    assert 150 <= result.feedback_sent <= 230 and 0 < result.feedback_wrong < result.feedback_sent
    assert _count(log_url, predictions, result.request_ids, 240) == 240
    assert _count(log_url, feedback, result.request_ids, result.feedback_sent) == result.feedback_sent

    engine = engine_for(log_url)
    with engine.connect() as connection:
        stored = connection.execute(
            select(feedback.c.actual, predictions.c.prediction).join(
                predictions,
                (predictions.c.request_id == feedback.c.request_id) & (predictions.c.row_index == feedback.c.row_index),
            )
        ).all()
        feedback_total = connection.execute(select(func.count()).select_from(feedback)).scalar_one()
    assert len(stored) == feedback_total == result.feedback_sent, "every outcome belongs to a logged prediction"
    disagreeing = sum(actual != prediction for actual, prediction in stored)
    assert disagreeing >= result.feedback_wrong // 2, "wrong outcomes make the live score worse"

    # A second burst without drift or wrong outcomes: the same held-out rows, other request ids.
    calm = traffic_for_run(records, TrafficPlan(rows=32, drift=None, seed=4), serving_url=url)
    assert calm.drifted_rows == 0 and calm.feedback_wrong == 0
    assert not set(calm.request_ids) & set(result.request_ids)


def test_refusals_are_clear(
    records: Path, served: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = served
    token = os.environ["MLPIPELINE_SERVING_TOKEN"]
    monkeypatch.setenv("MLPIPELINE_SERVING_TOKEN", "not-the-token")
    with pytest.raises(TrafficError, match="/feedback answered HTTP 40"):
        traffic_for_run(records, TrafficPlan(rows=8, drift=None), serving_url=url)
    monkeypatch.delenv("MLPIPELINE_SERVING_TOKEN")
    assert main([str(records), "--serving-url", url, "--rows", "4"]) == 1
    assert "MLPIPELINE_SERVING_TOKEN is not set" in capsys.readouterr().err
    monkeypatch.setenv("MLPIPELINE_SERVING_TOKEN", token)
    assert main([str(records.parent), "--serving-url", url]) == 1
    assert "not the records of a run that trained" in capsys.readouterr().err
    assert main([str(records), "--serving-url", url, "--rows", "4", "--drift-fraction", "2"]) == 1
    assert "within 0..1" in capsys.readouterr().err
