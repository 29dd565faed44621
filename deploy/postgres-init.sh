#!/usr/bin/env bash
# Runs once, when the postgres volume is first initialised: MLflow gets its own database beside Airflow's.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${MLFLOW_DB_NAME:-mlflow}\""
