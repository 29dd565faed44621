"""What the running task knows about its DAG run, in the library's terms."""

from __future__ import annotations

from typing import Any

from airflow.sdk import get_current_context

from mlpipeline.storage import run_key


def current_run_key() -> str:
    """The running DAG run's key for paths under ``data_dir`` (``raw/<run>/``, ``models/<run>/``, ...)."""
    return run_key(get_current_context()["run_id"])


def retrain_requests() -> list[dict[str, Any]]:
    """The extras of the ``retrain_request`` asset events that triggered the running DAG run (none for a run
    started by its time schedule or by hand): each says why live monitoring asked for a retrain."""
    events = get_current_context().get("triggering_asset_events") or {}
    return [dict(event.extra or {}) for asset_events in events.values() for event in asset_events]
