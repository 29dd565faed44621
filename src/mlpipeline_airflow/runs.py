"""What the running task knows about its DAG run, in the library's terms."""

from __future__ import annotations

import math
from typing import Any

from airflow.sdk import Asset, get_current_context

from mlpipeline.storage import run_key


def current_run_key() -> str:
    """The running DAG run's key for paths under ``data_dir`` (``raw/<run>/``, ``models/<run>/``, ...)."""
    return run_key(get_current_context()["run_id"])


def retrain_requests() -> list[dict[str, Any]]:
    """The extras of the ``retrain_request`` asset events that triggered the running DAG run (none for a run
    started by its time schedule or by hand): each says why live monitoring asked for a retrain."""
    events = get_current_context().get("triggering_asset_events") or {}
    return [dict(event.extra or {}) for asset_events in events.values() for event in asset_events]


def set_asset_event_extra(asset: Asset, extra: dict[str, Any]) -> None:
    """What the event the running task emits for its outlet ``asset`` (when it succeeds) says: Airflow stores it
    with the event and shows it in the asset's lineage. Small by design: fingerprints, counts, versions, paths.
    In every extra ``sha256`` is the raw snapshot's: the key that ties a champion to the data it came from."""
    get_current_context()["outlet_events"][asset].extra = extra


def raw_snapshot_extra(record: dict[str, Any]) -> dict[str, Any]:
    """The crawl of ``record`` (``crawl_data``'s) as a RAW_SNAPSHOT event's extra."""
    crawl = record["crawl"]
    return {
        "run": record["run"],
        "sha256": crawl["sha256"],
        "rows": crawl["rows"],
        "bytes": crawl["bytes"],
        "format": crawl["format"],
        "unchanged": crawl["unchanged"],  # the source served the snapshot the previous crawl stored
        "path": crawl["data_path"],
    }


def processed_data_extra(record: dict[str, Any]) -> dict[str, Any]:
    """The ETL of ``record`` (``etl``'s) as a PROCESSED_DATA event's extra."""
    etl = record["etl"]
    return {
        "run": record["run"],
        "sha256": record["crawl"]["sha256"],  # of the raw snapshot it was made from: the lineage link to RAW_SNAPSHOT
        "processed_sha256": etl["data_sha256"],  # of the processed features file itself
        "rows": etl["rows_out"],
        "rows_in": etl["rows_in"],
        "rows_quarantined": etl["rows_quarantined"],
        "duplicates_dropped": etl["duplicates_dropped"],
        "task": etl["task"],
        "path": etl["data_path"],
    }


def champion_extra(record: dict[str, Any]) -> dict[str, Any]:
    """The deployment of ``record`` (``deploy_model``'s) as a CHAMPION_MODEL event's extra."""
    deployed, decision, trained = record["deploy"], record["validate"], record["train"]
    return {
        "run": record["run"],
        "model_name": deployed["model_name"],
        "version": str(deployed["version"]),
        "previous_version": deployed["previous_version"],
        "alias": deployed["alias"],
        "metric": decision["metric"],
        "score": _finite(decision["candidate_score"]),
        "candidate": trained["candidate"],
        "mlflow_run_id": trained["mlflow_run_id"],
        "sha256": trained["data_sha256"],  # of the raw snapshot it learned from
        "model_sha256": trained.get("model_sha256", ""),  # the signed fingerprint of the model's files
        "rows_train": trained["n_train"],
        "rows_test": trained["n_test"],
    }


def _finite(value: Any) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
