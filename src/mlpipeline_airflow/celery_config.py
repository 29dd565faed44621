"""Celery settings of the production stack: Airflow's defaults, plus task events from the moment a worker starts,
plus the pipeline's libraries imported once per worker instead of once per task.

* Events: without them a worker only reports tasks after Flower has asked it to (``enable_events``), so tasks
  that run before Flower's request, or while Flower restarts, never show in Flower.
* Preloading: every Airflow task runs in a process forked from the worker (Celery's prefork pool, then Airflow's
  supervisor), so what the worker has imported, each task inherits for free. Importing pandas, scikit-learn and
  MLflow costs a task 2-5 s of CPU otherwise, more than the work itself on small data. Turn it off with
  ``ML_PIPELINE_WORKER_PRELOAD=0``.

Selected with ``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=mlpipeline_airflow.celery_config.CELERY_CONFIG``.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

log = logging.getLogger(__name__)

CELERY_CONFIG: dict[str, Any] = {
    **DEFAULT_CELERY_CONFIG,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
}

# What the pipeline's tasks import. Import only: nothing may start threads or OpenMP pools before the fork.
PRELOADED_MODULES = (
    "pandas",
    "pyarrow.parquet",
    "sklearn.ensemble",
    "mlflow",
    "mlflow.sklearn",
    "mlpipeline.stages.crawl",
    "mlpipeline.stages.etl",
    "mlpipeline.stages.train",
    "mlpipeline.stages.validate",
    "mlpipeline.stages.deploy",
    "mlpipeline.stages.monitor",
    "mlpipeline.stages.notify",
    "airflow.providers.smtp.hooks.smtp",
)


@worker_init.connect
def preload_pipeline_modules(**_: Any) -> None:
    """Runs in the worker's main process before its pool forks (not in the scheduler or Flower)."""
    if os.environ.get("ML_PIPELINE_WORKER_PRELOAD", "1") == "0":
        return
    started = time.perf_counter()
    for name in PRELOADED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a worker without the ML stack still runs other tasks
            log.warning("not preloading %s: %s", name, exc)
    log.info("preloaded %d modules in %.1f s", len(PRELOADED_MODULES), time.perf_counter() - started)
