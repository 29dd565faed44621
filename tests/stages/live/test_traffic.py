"""Reading a window of the prediction log: only the version's rows inside the window, an evenly spaced sample when
there are more than the cap (every k-th row in serving order, the same on every read), and the requests' figures."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert

from mlpipeline.prediction_store import create_tables, engine_for, feedback, prediction_requests, predictions
from mlpipeline.stages.live import traffic

T0 = 1_900_000_000.0


def _prediction(n: int) -> dict[str, object]:
    """Row ``n``, served at T0 + n by version 1 (every 10th by version 2)."""
    return {
        "request_id": f"r{n:04d}",
        "row_index": 0,
        "served_at": T0 + n,
        "model_name": "m",
        "model_version": "1" if n % 10 else "2",
        "features": {"x": n},
        "prediction": n % 2,
        "probabilities": 0.5,
    }


def _request(n: int) -> dict[str, object]:
    """Request ``n``: the first 10 refused (503, the first without a model name), then answered in ``n`` ms."""
    return {
        "request_id": f"r{n:04d}",
        "served_at": T0 + n,
        "model_name": None if n == 0 else "m",
        "model_version": "1",
        "rows": 1,
        "latency_ms": float(n),
        "status_code": 503 if n < 10 else 200,
    }


def _log(path: Path, rows: int) -> str:
    url = f"sqlite:///{path}"
    engine = engine_for(url)
    create_tables(engine)
    answered = [_prediction(n) for n in range(rows)]
    outcomes = [
        {"request_id": f"r{n:04d}", "row_index": 0, "actual": 1, "received_at": T0 + n} for n in range(0, rows, 3)
    ]
    requests = [_request(n) for n in range(100)]
    with engine.begin() as db:
        db.execute(insert(predictions), answered)
        db.execute(insert(feedback), outcomes)
        db.execute(insert(prediction_requests), requests)
    engine.dispose()
    return url


def test_only_the_versions_rows_in_the_window_and_an_even_sample_past_the_cap(tmp_path: Path) -> None:
    engine = engine_for(_log(tmp_path / "log.db", 1000))
    window = traffic.Window("m", "1", T0 + 100, T0 + 700)  # rows 100..699; version 2 every 10th row
    with engine.connect() as db:
        total, with_feedback = traffic.count_predictions(db, window)
        assert (total, with_feedback) == (540, len([n for n in range(100, 700) if n % 10 and n % 3 == 0]))
        everything = traffic.live_inputs(db, window, total, cap=1000)
        sample = traffic.live_inputs(db, window, total, cap=100)
        again = traffic.live_inputs(db, window, total, cap=100)
        outcomes = traffic.live_outcomes(db, window, with_feedback, cap=1000)
        stats = traffic.request_stats(db, traffic.Window("m", "1", T0, T0 + 100))
    engine.dispose()
    assert list(everything["x"]) == [n for n in range(100, 700) if n % 10]
    # 540 rows, at most 100: every 6th, from the first row of the window to its end.
    assert list(sample["x"]) == list(everything["x"])[::6] and len(sample) == 90
    assert sample.equals(again)
    assert list(sample[traffic.PREDICTION]) == [x % 2 for x in sample["x"]]
    assert list(outcomes.columns) == ["prediction", "probabilities", "actual"] and len(outcomes) == with_feedback
    # 100 requests: 10 refused with 503 (one without a model name: it counts too), 90 answered in 10..99 ms.
    assert (stats.requests, stats.answered, stats.status_counts) == (100, 90, {"200": 90, "503": 10})
    assert stats.error_rate == 0.1
    assert (stats.latency_p50_ms, stats.latency_p95_ms) == (54.5, 94.55)
