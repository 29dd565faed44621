"""Fixtures shared by the tests of tests/dev: one production process stack for the whole package, so the stack
tests and the browser tests drive the same running services instead of starting them twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlpipeline.dev.stack import ProcessStack
from tests.services import process_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    overrides = {"ML_PIPELINE_MAX_ACTIVE_RUNS": "4", "TRAINING_POOL_SLOTS": "1", "DATASOURCE_ROWS": "3000"}
    with process_stack(tmp_path_factory.mktemp("prodstack"), overrides) as running:
        try:
            running.up()
            yield running
        finally:
            running.down()
