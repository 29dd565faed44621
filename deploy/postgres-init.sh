#!/usr/bin/env bash
# Runs once, when the postgres volume is first initialised: MLflow's database, and the prediction log's database with
# a role of its own (the model server and the monitoring DAG write as it: not the superuser, which also reaches
# Airflow's and MLflow's databases) and Grafana's read-only role (SELECT on the tables the writer creates).
# An existing volume skips this script: run it by hand (`docker compose exec postgres bash
# /docker-entrypoint-initdb.d/10-databases.sh`) after an upgrade that adds a database.
# Passwords reach psql on stdin, never on its command line (`ps` would show them).
set -euo pipefail
: "${PREDICTION_LOG_DB_PASSWORD:?set PREDICTION_LOG_DB_PASSWORD}"
: "${PREDICTION_LOG_READER_PASSWORD:?set PREDICTION_LOG_READER_PASSWORD}"
MLFLOW_DB="${MLFLOW_DB_NAME:-mlflow}"
LOG_DB="${PREDICTION_LOG_DB_NAME:-prediction_log}"
WRITER="${PREDICTION_LOG_DB_USER:-prediction_log}"
READER="${PREDICTION_LOG_READER_USER:-grafana_reader}"

sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE "$MLFLOW_DB";
CREATE ROLE "$WRITER" LOGIN PASSWORD $(sql_literal "$PREDICTION_LOG_DB_PASSWORD");
CREATE ROLE "$READER" LOGIN PASSWORD $(sql_literal "$PREDICTION_LOG_READER_PASSWORD");
CREATE DATABASE "$LOG_DB" OWNER "$WRITER";
REVOKE ALL ON DATABASE "$LOG_DB" FROM PUBLIC;
GRANT CONNECT ON DATABASE "$LOG_DB" TO "$READER";
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$LOG_DB" <<SQL
GRANT USAGE ON SCHEMA public TO "$READER";
ALTER DEFAULT PRIVILEGES FOR ROLE "$WRITER" IN SCHEMA public GRANT SELECT ON TABLES TO "$READER";
SQL
