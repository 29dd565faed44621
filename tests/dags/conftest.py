"""Airflow imported in-process by the DAG-integrity test: a throwaway home (it creates logs/ on import).

The DAG tests of this package share one embedded stack (the root conftest's is per module): migrating Airflow,
serialising the DAG and starting the services cost ~1 min, and every test here names the registered model,
the data and the model server it uses, so one module's runs do not decide another's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from mlpipeline.dev.localstack import LocalStack, Ports

_AIRFLOW_HOME = tempfile.TemporaryDirectory(prefix="mlpipeline-dag-tests-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME.name)


@pytest.fixture(scope="package")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A migrated Airflow home (SQLite) plus the live data source, SMTP catcher and model server."""
    stack = LocalStack(root=tmp_path_factory.mktemp("stack"), ports=Ports.free(), dataset_rows=3000)
    try:
        stack.init_airflow()
        stack.airflow("dags", "reserialize")  # so the DAG exists in the metadata DB before its first run
        stack.start_services()
        yield stack
    finally:
        stack.stop()
