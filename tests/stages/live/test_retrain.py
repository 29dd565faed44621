"""The retraining cool-down: at most one request per ``retrain_cooldown_hours``, remembered in
``<data_dir>/state/retrain_request.json``; a retry of the check that made the last request may make it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpipeline.config import build_config
from mlpipeline.stages.live.retrain import decide_retrain, last_request, record_request, state_path

HOUR = 3600.0
T0 = 1_900_000_000.0


def test_one_request_per_cooldown_and_the_same_check_may_retry(tmp_path: Path) -> None:
    config = build_config({"data_dir": str(tmp_path), "retrain_cooldown_hours": 24})
    first = decide_retrain(config, check_id="a", now=T0)
    assert first.allowed and first.last is None
    assert not state_path(config).exists()  # deciding writes nothing
    record_request(config, check_id="a", reason="drift in age", extra={"model_version": "3"}, now=T0)

    assert decide_retrain(config, check_id="a", now=T0 + 60).allowed  # a retry of the requesting check
    blocked = decide_retrain(config, check_id="b", now=T0 + 5 * HOUR)
    assert not blocked.allowed
    assert "last requested at 2030-03-17T17:46:40+00:00 by check a (reason: drift in age)" in blocked.message
    assert "until 2030-03-18T17:46:40+00:00" in blocked.message
    assert decide_retrain(config, check_id="c", now=T0 + 24 * HOUR).allowed
    assert last_request(config) == {
        "check_id": "a",
        "requested_at": T0,
        "requested_at_iso": "2030-03-17T17:46:40+00:00",
        "reason": "drift in age",
        "model_version": "3",
    }


def test_a_zero_cooldown_allows_every_request(tmp_path: Path) -> None:
    config = build_config({"data_dir": str(tmp_path), "retrain_cooldown_hours": 0})
    record_request(config, check_id="a", reason="x", extra={}, now=T0)
    assert decide_retrain(config, check_id="b", now=T0).allowed


def test_a_damaged_state_file_says_how_to_reset(tmp_path: Path) -> None:
    config = build_config({"data_dir": str(tmp_path)})
    state_path(config).parent.mkdir(parents=True)
    state_path(config).write_text(json.dumps({"check_id": "a"}))
    with pytest.raises(ValueError, match=r"is not a retraining request record .* delete it to reset"):
        decide_retrain(config, check_id="b", now=T0)
