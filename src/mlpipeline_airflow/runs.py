"""What the running task knows about its DAG run, in the library's terms."""

from __future__ import annotations

from airflow.sdk import get_current_context

from mlpipeline.storage import run_key


def current_run_key() -> str:
    """The running DAG run's key for paths under ``data_dir`` (``raw/<run>/``, ``models/<run>/``, ...)."""
    return run_key(get_current_context()["run_id"])
