"""The live data source every crawl test talks to (no HTTP mocks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlpipeline.dev.datasource import DataSourceServer
from tests.stages.crawl.support import ROWS


@pytest.fixture
def server() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=ROWS, seed=7) as running:
        yield running
