"""Airflow imported in-process by the DAG-integrity test: a throwaway home (it creates logs/ on import)."""

from __future__ import annotations

import os
import tempfile

_AIRFLOW_HOME = tempfile.TemporaryDirectory(prefix="mlpipeline-dag-tests-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME.name)
