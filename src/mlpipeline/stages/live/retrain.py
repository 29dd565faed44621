"""At most one retraining request per ``retrain_cooldown_hours``: the last request is remembered in
``<data_dir>/state/retrain_request.json`` (written atomically, only once the request is decided).

A retry of the very check that made the last request may request again: its first try recorded the request but
may have died before Airflow emitted the asset event."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlpipeline.config import PipelineConfig
from mlpipeline.storage import DataLayout, atomic_write_json, read_json

STATE_FILE = "retrain_request.json"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RetrainDecision:
    allowed: bool
    message: str
    last: dict[str, Any] | None  # the last request's record, if any


def state_path(config: PipelineConfig) -> Path:
    return DataLayout.of(config.data_dir).state / STATE_FILE


def last_request(config: PipelineConfig) -> dict[str, Any] | None:
    path = state_path(config)
    if not path.exists():
        return None
    try:
        record = read_json(path)
        float(record["requested_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a retraining request record ({exc}); delete it to reset") from exc
    return record


def decide_retrain(config: PipelineConfig, *, check_id: str, now: float | None = None) -> RetrainDecision:
    """Whether check ``check_id`` may request retraining now, and why (not)."""
    now = time.time() if now is None else float(now)
    last = last_request(config)
    if last is None:
        return RetrainDecision(True, "no retraining was requested before", None)
    if last.get("check_id") == check_id:
        return RetrainDecision(True, f"check {check_id} requested it already (a retry): requesting again", last)
    cooldown = config.retrain_cooldown_hours * 3600
    until = float(last["requested_at"]) + cooldown
    if now < until:
        return RetrainDecision(
            False,
            f"retraining was last requested at {_iso(float(last['requested_at']))} by check {last.get('check_id')} "
            f"(reason: {last.get('reason')}); within retrain_cooldown_hours ({config.retrain_cooldown_hours:g} h) "
            f"no new request is made until {_iso(until)}",
            last,
        )
    return RetrainDecision(True, f"the last request ({_iso(float(last['requested_at']))}) is past the cool-down", last)


def record_request(config: PipelineConfig, *, check_id: str, reason: str, extra: dict[str, Any], now: float) -> Path:
    """Remember that ``check_id`` requests retraining at ``now`` (call only once decided)."""
    return atomic_write_json(
        state_path(config),
        {"check_id": check_id, "requested_at": now, "requested_at_iso": _iso(now), "reason": reason, **extra},
    )
