"""Retries, backoff and failures of the crawl's HTTP requests against a live DataSourceServer."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from mlpipeline.dev.datasource import DataSourceServer
from mlpipeline.stages.crawl import CrawlError, crawl
from tests.stages.crawl.support import ROWS, assert_nothing_left, data_requests, make_config

# --- failures -----------------------------------------------------------------------------------------------------


def test_retries_server_errors_with_backoff(tmp_path: Path, server: DataSourceServer) -> None:
    server.fail_next(2, 500)
    config = make_config(tmp_path, f"{server.url}/data.csv", crawl_backoff_seconds=0.1, crawl_max_retries=2)
    started = time.perf_counter()
    result = crawl(config, "run_1")
    assert time.perf_counter() - started >= 0.1 + 0.2  # backoff doubles
    assert result.rows == ROWS
    assert [r.status for r in data_requests(server)] == [500, 500, 200]
    assert json.loads(Path(result.manifest_path).read_text())["requests"] == 3


def test_retries_rate_limits_and_json_api_pages(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(tmp_path, f"{server.url}/api/records", crawl_format="json_api", crawl_page_size=1000)
    server.fail_next(1, 429)
    result = crawl(config, "run_1")
    assert result.rows == ROWS and [r.status for r in data_requests(server)] == [429, 200, 200]


def test_gives_up_after_the_retries(tmp_path: Path, server: DataSourceServer) -> None:
    server.fail_next(10, 502)
    url = f"{server.url}/data.csv"
    with pytest.raises(CrawlError, match="after 3 attempt") as error:
        crawl(make_config(tmp_path, url, crawl_max_retries=2), "run_1")
    assert url in str(error.value) and "HTTP 502" in str(error.value)
    assert error.value.retryable is True  # the source may come back: worth another task try later
    assert len(data_requests(server)) == 3
    assert_nothing_left(tmp_path)


def test_unreachable_source(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.csv"
    started = time.perf_counter()
    with pytest.raises(CrawlError, match="after 3 attempt") as error:
        crawl(make_config(tmp_path, url, crawl_max_retries=2), "run_1")
    assert url in str(error.value) and "network error" in str(error.value) and "reachable" in str(error.value)
    assert error.value.retryable is True
    assert time.perf_counter() - started < 5
    assert_nothing_left(tmp_path)


def test_timeouts_are_retried_then_fail(tmp_path: Path, server: DataSourceServer) -> None:
    server.delay_seconds = 1.0
    config = make_config(tmp_path, f"{server.url}/data.csv", crawl_timeout_seconds=0.2, crawl_max_retries=1)
    started = time.perf_counter()
    with pytest.raises(CrawlError, match="timed out"):
        crawl(config, "run_1")
    assert time.perf_counter() - started < 1.5
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("status", [404, 403, 400])
def test_client_errors_fail_at_once(tmp_path: Path, server: DataSourceServer, status: int) -> None:
    url = f"{server.url}/data.csv"
    if status == 404:
        url = f"{server.url}/missing.csv"
    elif status == 400:
        url = f"{server.url}/data.csv?rows=lots"
    else:
        server.fail_next(1, 403)
    with pytest.raises(CrawlError, match=f"HTTP {status}") as error:
        crawl(make_config(tmp_path, url, crawl_max_retries=3), "run_1")
    assert url in str(error.value) and error.value.retryable is False
    assert len(data_requests(server)) == 1  # no retries
    assert_nothing_left(tmp_path)
