"""The Airflow Assets of the pipeline: what ``ml_pipeline`` produces (raw snapshot, processed data, champion model)
and what asks it to run (a retraining request from ``model_monitoring``).

URIs name the logical thing, not a path: where the files are is a Variable (``data_dir``), known only at run time,
so each asset event's ``extra`` carries the run's paths, fingerprints, row counts and versions."""

from __future__ import annotations

from airflow.sdk import Asset

GROUP = "ml_pipeline"

RAW_SNAPSHOT = Asset(name="raw_snapshot", uri="mlpipeline://ml_pipeline/raw_snapshot", group=GROUP)
"""An immutable crawl of the source (extra: run, sha256, rows, path)."""

PROCESSED_DATA = Asset(name="processed_data", uri="mlpipeline://ml_pipeline/processed_data", group=GROUP)
"""The cleaned Parquet the candidates train on (extra: run, sha256 of the raw data, rows, quarantined, path)."""

CHAMPION_MODEL = Asset(name="champion_model", uri="mlpipeline://ml_pipeline/champion_model", group=GROUP)
"""A new champion: the registered model version the ``champion`` alias now points at (extra: model name, version,
metric and score, run). A downstream DAG may be scheduled on it."""

RETRAIN_REQUEST = Asset(name="retrain_request", uri="mlpipeline://model_monitoring/retrain_request", group=GROUP)
"""Live monitoring found the champion degraded: ``ml_pipeline`` is scheduled on this besides its time schedule
(extra: reason, model name and version, monitoring record path)."""
