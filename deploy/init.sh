#!/usr/bin/env bash
# airflow-init: run once before the other components (docker compose) or by `make stack` (local processes).
# Migrates the metadata DB, creates the admin user of the FAB auth manager and the pools. Idempotent.
# Runs as the airflow user, not root. No secret goes on a command line (`ps` would show it).
set -euo pipefail

: "${AIRFLOW_ADMIN_USERNAME:?set AIRFLOW_ADMIN_USERNAME}"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD}"

echo "airflow-init: migrating the metadata database"
airflow db migrate

# `airflow users create --password` would put the password on a command line: FAB's security manager gets it from
# the environment instead. An existing admin gets the password from .env again (how to rotate it).
python - <<'PY'
import os

from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
from airflow.utils.providers_configuration_loader import providers_configuration_loaded


@providers_configuration_loaded
def ensure_admin(username: str, password: str, email: str) -> None:
    with get_application_builder() as appbuilder:
        manager = appbuilder.sm
        user = manager.find_user(username=username)
        if user is None:
            if not manager.add_user(username, "ML", "Admin", email, manager.find_role("Admin"), password):
                raise SystemExit(f"airflow-init: could not create admin user {username}")
            print(f"airflow-init: created admin user {username}")
        else:
            manager.reset_password(user.id, password)
            print(f"airflow-init: admin user {username} exists; password set from the environment")


ensure_admin(
    os.environ["AIRFLOW_ADMIN_USERNAME"],
    os.environ["AIRFLOW_ADMIN_PASSWORD"],
    os.environ.get("AIRFLOW_ADMIN_EMAIL", "admin@example.com"),
)
PY

echo "airflow-init: pool ${ML_PIPELINE_TRAINING_POOL:-training} with ${TRAINING_POOL_SLOTS:-1} slot(s)"
airflow pools set "${ML_PIPELINE_TRAINING_POOL:-training}" "${TRAINING_POOL_SLOTS:-1}" \
  "Caps how many models train at once across all workers"
echo "airflow-init: pool ${ML_PIPELINE_DEPLOY_POOL:-deploy} with 1 slot"
airflow pools set "${ML_PIPELINE_DEPLOY_POOL:-deploy}" 1 "Serialises deploys: one run moves the champion alias at a time"
echo "airflow-init: done"
