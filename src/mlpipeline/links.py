"""Links between the places a run shows up: its Airflow run and task pages and its MLflow run. Plain URL building
from the configured base URLs (``airflow_ui_url``, ``mlflow_ui_url``); None where no base URL is known."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from mlpipeline.config import PipelineConfig

ML_WORKFLOW = "?workflowType=machine_learning"


def _base(url: str | None) -> str | None:
    """``url`` without credentials, query or trailing slash (a tracking URI may carry a user:password)."""
    if not url or not url.startswith(("http://", "https://")):
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def mlflow_ui_base(config: PipelineConfig) -> str | None:
    """The MLflow UI: ``mlflow_ui_url``, else the tracking URI when it is a server's (http/https)."""
    return _base(config.mlflow_ui_url) or _base(config.mlflow_tracking_uri)


def mlflow_run_url(config: PipelineConfig, run_id: str | None, experiment_id: str | None = None) -> str | None:
    """The MLflow UI page of run ``run_id`` (MLflow redirects ``#/runs/<id>`` to its experiment's page).

    ``?workflowType=machine_learning``: MLflow 3's UI opens experiments on its generative-AI pages unless the link (or
    the browser's last choice) says otherwise; a reviewer following our links lands in the model-training views."""
    base = mlflow_ui_base(config)
    if base is None or not run_id:
        return None
    if experiment_id:
        return f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}{ML_WORKFLOW}"
    return f"{base}/#/runs/{quote(run_id, safe='')}{ML_WORKFLOW}"


def airflow_run_url(config: PipelineConfig, dag_id: str, run_id: str | None) -> str | None:
    """The Airflow UI page of DAG run ``run_id`` (ids are quoted: they hold ``:`` and ``+``)."""
    base = _base(config.airflow_ui_url)
    if base is None or not run_id:
        return None
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def airflow_task_url(
    config: PipelineConfig, dag_id: str, run_id: str | None, task_id: str, map_index: int = -1
) -> str | None:
    """The Airflow UI page of one task instance (a mapped one's by its index)."""
    run = airflow_run_url(config, dag_id, run_id)
    if run is None:
        return None
    task = f"{run}/tasks/{quote(task_id, safe='')}"
    return f"{task}/mapped/{map_index}" if map_index >= 0 else task
