"""Airflow wiring for the ``ml_maintenance`` DAG: once a day, apply the retention policy to what ``ml_pipeline``
leaves behind. Thin on purpose: the policy is ``mlpipeline.stages.retention.apply_retention``; Airflow glue
(failure emails, fail-fast errors) is ``mlpipeline_airflow``'s, as for ``ml_pipeline``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from mlpipeline.config import ConfigError, PipelineConfig, load_config
from mlpipeline.storage import DataLayout, atomic_write_json
from mlpipeline_airflow.callbacks import notify_failure, notify_run_failure
from mlpipeline_airflow.failures import fail_fast_on
from mlpipeline_airflow.settings import QUEUE_DEFAULT, schedule_from_env
from mlpipeline_airflow.variables import optional_variable

log = logging.getLogger(__name__)

DAG_ID = "ml_maintenance"
PIPELINE_DAG_ID = "ml_pipeline"
SCHEDULE = schedule_from_env("ML_MAINTENANCE_SCHEDULE")
# The last application's full record (every deleted path): the XCom carries only a summary.
RECORD_NAME = "retention.json"

default_args = {
    "owner": "ml-team",
    # A registry or file system hiccup is transient; retention is idempotent, so retrying is always safe.
    "retries": 3,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(minutes=30),
    "on_failure_callback": notify_failure,
    "queue": QUEUE_DEFAULT,
}

DOC = """
# ml_maintenance

Daily housekeeping for `ml_pipeline`: `apply_retention` deletes

- pipeline runs' `raw/`, `processed/`, `models/` and `runs/` directories older than the newest `retention_runs`,
- registered model versions older than the newest `retention_registry_versions` (their MLflow runs stay),
- temp files and directories of writers that died mid-write,

but never the champion's or its predecessor's data and model, the crawler's last snapshot, or anything of an
`ml_pipeline` run that may still be active (queued or running, or written to within `retention_grace_hours`).
Settings are the same Airflow Variables as `ml_pipeline`'s. Trigger with `{"dry_run": true}` to see what would go
(in the task's XCom and `<data_dir>/state/retention.json`) without deleting anything.
"""


def _active_pipeline_runs(config: PipelineConfig) -> list[str]:
    """Run keys of the ``ml_pipeline`` runs that are queued or running. A task can ask Airflow how many there are,
    not which: they are the most recently started ones, so that many of the newest runs on disk are named (an
    older run still writing is protected by ``retention_grace_hours`` anyway)."""
    from mlpipeline.stages.retention import newest_runs

    ti = get_current_context()["ti"]
    count = ti.get_dr_count(dag_id=PIPELINE_DAG_ID, states=["queued", "running"])
    return newest_runs(DataLayout.of(config.data_dir), count)


@task
def apply_retention() -> dict[str, Any]:
    """Apply the retention settings (`retention_runs`, `retention_registry_versions`, `retention_grace_hours`)
    to the data directory and the model registry; the full record of what went is written to
    `<data_dir>/state/retention.json`, a summary is returned. Bad settings fail at once; an unreachable registry is
    retried (nothing is deleted while the champion cannot be identified)."""
    from mlpipeline.stages import retention

    dry_run = bool(get_current_context()["params"].get("dry_run", False))
    with fail_fast_on(ConfigError):
        config = load_config(optional_variable)  # an unset Variable: the setting's default
    active = _active_pipeline_runs(config)
    log.info("ml_pipeline runs that may be active: %s", active or "none")
    result = retention.apply_retention(config, active_runs=active, dry_run=dry_run)
    record = DataLayout.of(config.data_dir).state / RECORD_NAME
    atomic_write_json(record, {**result.to_dict(), "applied_at": datetime.now().astimezone().isoformat()})
    for path in result.deleted_paths:
        log.info("%s %s", "would delete" if dry_run else "deleted", path)
    return {
        "dry_run": dry_run,
        "deleted_runs": len(result.deleted_runs),
        "deleted_versions": result.deleted_versions,
        "removed_temp_paths": len(result.removed_temp_paths),
        "bytes_freed": result.bytes_freed,
        "kept_runs": len(result.kept_runs),
        "record_path": str(record),
    }


@dag(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    on_failure_callback=notify_run_failure,  # a failed run whose task failures were not emailed
    params={"dry_run": Param(False, type="boolean", description="Report what would be deleted; delete nothing.")},
    tags=["ml", "maintenance"],
    doc_md=DOC,
)
def ml_maintenance() -> None:
    apply_retention()


ml_maintenance()
