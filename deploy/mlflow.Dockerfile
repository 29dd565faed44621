# The MLflow tracking server + model registry: its own image, because its SQL backend needs SQLAlchemy 2 while
# Airflow 3.1 (FAB auth manager) pins SQLAlchemy < 2. Same MLflow version as the clients (requirements-mlflow.lock),
# with the [auth] extra for the basic-auth app.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir uv==0.13.9
COPY requirements-mlflow.lock /tmp/requirements-mlflow.lock
RUN uv pip install --system --no-cache -r /tmp/requirements-mlflow.lock
# The entrypoint (auth config, server, service account): standard library only.
COPY deploy/mlflow_server.py /opt/ml-pipeline/deploy/mlflow_server.py
# /mlflow/auth: where the entrypoint writes the auth config (mode 600) at each start.
RUN useradd --create-home --uid 50000 mlflow && mkdir -p /mlflow/artifacts /mlflow/auth \
 && chown mlflow /mlflow/artifacts /mlflow/auth && chmod 700 /mlflow/auth
USER mlflow
