#!/usr/bin/env bash
# airflow-init: run once before the other components (docker compose) or by `make stack` (local processes).
# Migrates the metadata DB, creates the admin user of the FAB auth manager and the pools. Idempotent.
set -euo pipefail

: "${AIRFLOW_ADMIN_USERNAME:?set AIRFLOW_ADMIN_USERNAME}"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD}"

echo "airflow-init: migrating the metadata database"
airflow db migrate

if airflow users list --output plain 2>/dev/null | awk 'NR > 1 {print $2}' | grep -qx "${AIRFLOW_ADMIN_USERNAME}"; then
  echo "airflow-init: admin user ${AIRFLOW_ADMIN_USERNAME} exists"
else
  echo "airflow-init: creating admin user ${AIRFLOW_ADMIN_USERNAME}"
  airflow users create --role Admin --username "${AIRFLOW_ADMIN_USERNAME}" --password "${AIRFLOW_ADMIN_PASSWORD}" \
    --email "${AIRFLOW_ADMIN_EMAIL:-admin@example.com}" --firstname ML --lastname Admin
fi

echo "airflow-init: pool ${ML_PIPELINE_TRAINING_POOL:-training} with ${TRAINING_POOL_SLOTS:-1} slot(s)"
airflow pools set "${ML_PIPELINE_TRAINING_POOL:-training}" "${TRAINING_POOL_SLOTS:-1}" \
  "Caps how many models train at once across all workers"
echo "airflow-init: done"
