"""Deployment settings the DAG files read when they are parsed: from the environment (cheap), never from a
Variable (that would be a call per parse). One home for the names both DAGs use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Asset


def schedule_from_env(name: str, default: str = "@daily") -> str | None:
    """A cron expression or preset; ``none`` (or empty) for manual runs only."""
    value = os.environ.get(name, default) or None
    return None if value in ("none", "None", "null") else value


# Celery queues by kind of work, so workers can be sized (and scaled) per kind; LocalExecutor ignores them.
QUEUE_DEFAULT = os.environ.get("ML_PIPELINE_QUEUE_DEFAULT", "default")
QUEUE_IO = os.environ.get("ML_PIPELINE_QUEUE_IO", "io")
QUEUE_TRAINING = os.environ.get("ML_PIPELINE_QUEUE_TRAINING", "training")
# Caps concurrent training across all workers and runs; created by the init step (deploy/init.sh, the demo).
TRAINING_POOL = os.environ.get("ML_PIPELINE_TRAINING_POOL", "training")
# One slot: deploys never overlap, whatever runs are active (deploy itself also checks the alias before moving it).
DEPLOY_POOL = os.environ.get("ML_PIPELINE_DEPLOY_POOL", "deploy")


def asset_or_time_schedule(cron: str | None, asset: Asset) -> Any:
    """``cron`` or an event of ``asset``, whichever comes first; only the asset for ``cron`` None (manual runs
    and asset events)."""
    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.trigger import CronTriggerTimetable

    if cron is None:
        return [asset]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[asset])
