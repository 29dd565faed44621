"""Celery settings of the production stack: Airflow's defaults plus task events from the moment a worker starts.

Without them a worker only reports tasks after Flower has asked it to (``enable_events``), so tasks that run
before Flower's request, or while Flower restarts, never show in Flower. Selected with
``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=mlpipeline_airflow.celery_config.CELERY_CONFIG``.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG: dict[str, Any] = {
    **DEFAULT_CELERY_CONFIG,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
}
