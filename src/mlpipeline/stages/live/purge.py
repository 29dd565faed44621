"""Retention of the prediction log: logged requests, predictions and feedback older than
``prediction_log_retention_days`` are deleted. The monitoring checks' own rows are kept (one row an hour, plus one
per feature: the dashboards' history)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete

from mlpipeline.config import PipelineConfig
from mlpipeline.prediction_store import create_tables, engine_for, feedback, prediction_requests, predictions


@dataclass(frozen=True)
class PurgeResult:
    cutoff: float  # epoch seconds: rows older than this were deleted
    requests: int
    predictions: int
    feedback: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def purge_prediction_log(config: PipelineConfig, *, now: float | None = None) -> PurgeResult:
    """Delete what the retention setting no longer keeps (idempotent: a retry deletes what is left). Feedback goes
    by when it was received, so an outcome that arrives late for an old prediction is kept as long as any other."""
    if not config.prediction_log_url:
        raise ValueError("prediction_log_url is not set: there is no prediction log to purge")
    now = time.time() if now is None else float(now)
    cutoff = now - config.prediction_log_retention_days * 86400
    engine = engine_for(config.prediction_log_url)
    try:
        create_tables(engine)
        with engine.begin() as connection:
            removed = {
                "requests": connection.execute(
                    delete(prediction_requests).where(prediction_requests.c.served_at < cutoff)
                ).rowcount,
                "predictions": connection.execute(delete(predictions).where(predictions.c.served_at < cutoff)).rowcount,
                "feedback": connection.execute(delete(feedback).where(feedback.c.received_at < cutoff)).rowcount,
            }
    finally:
        engine.dispose()
    return PurgeResult(cutoff=cutoff, **{key: int(value or 0) for key, value in removed.items()})
