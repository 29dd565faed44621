"""The data source's HTTP service and command line, exercised for real over 127.0.0.1."""

from __future__ import annotations

import email.utils
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlpipeline.dev import churn_data, formats
from mlpipeline.dev.datasource import (
    BROKEN_CSV,
    COLUMNS,
    FEATURE_COLUMNS,
    DataSourceServer,
    generate_churn_dataset,
    serialize,
    to_csv_bytes,
    to_parquet_bytes,
)
from tests.dev.churn_checks import invalid_rows


def test_reexports_the_generator_and_serialisers() -> None:
    # Tests, benchmarks and the demo import these from the data source module: they must be the very same objects.
    assert generate_churn_dataset is churn_data.generate_churn_dataset
    assert (COLUMNS, FEATURE_COLUMNS) == (churn_data.COLUMNS, churn_data.FEATURE_COLUMNS)
    assert (serialize, to_csv_bytes, to_parquet_bytes) == (
        formats.serialize,
        formats.to_csv_bytes,
        formats.to_parquet_bytes,
    )


@pytest.fixture
def server() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=1200, seed=7) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def test_health_files_and_content_types(server: DataSourceServer, client: httpx.Client) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    health = client.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    expected = server.dataset()
    csv = client.get(server.url + "/data.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert len(pd.read_csv(io.BytesIO(csv.content), dtype=str)) == len(expected) == 1200
    jsonl = client.get(server.url + "/data.jsonl")
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    assert len(jsonl.text.splitlines()) == 1200
    parquet = client.get(server.url + "/data.parquet")
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 1200
    for response in (csv, jsonl, parquet):
        assert response.headers["etag"].startswith('"') and response.headers["last-modified"]
        assert int(response.headers["content-length"]) == len(response.content)
    head = client.head(server.url + "/data.csv")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == csv.headers["etag"]
    assert client.get(server.url + "/nope").status_code == 404
    assert client.get(server.url + "/data.xml").status_code == 404
    assert client.get(server.url + "/").headers["content-type"].startswith("text/html")


def test_conditional_requests(server: DataSourceServer, client: httpx.Client) -> None:
    url = server.url + "/data.csv"
    first = client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert email.utils.parsedate_to_datetime(modified).timestamp() <= time.time() + 1  # not in the future
    not_modified = client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110): a stale tag means 200 even with a recent date.
    assert client.get(url, headers={"If-None-Match": '"stale"', "If-Modified-Since": modified}).status_code == 200

    server.bump_version()
    changed = client.get(url, headers={"If-None-Match": etag, "If-Modified-Since": modified})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag and changed.content != first.content
    assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 200
    later = email.utils.parsedate_to_datetime(changed.headers["last-modified"])
    assert later > email.utils.parsedate_to_datetime(modified)

    server.drift = True  # a runtime switch is a content change too
    drifted = client.get(url, headers={"If-None-Match": changed.headers["etag"]})
    assert drifted.status_code == 200 and drifted.headers["etag"] != changed.headers["etag"]

    server.conditional = False  # a naive server: no validators, never 304
    naive = client.get(url, headers={"If-None-Match": drifted.headers["etag"]})
    assert naive.status_code == 200 and "etag" not in naive.headers and "last-modified" not in naive.headers


def test_query_parameters_override_and_are_cached(server: DataSourceServer, client: httpx.Client) -> None:
    small = client.get(server.url + "/data.csv", params={"rows": 50, "seed": 3})
    assert len(pd.read_csv(io.BytesIO(small.content))) == 50
    again = client.get(server.url + "/data.csv", params={"rows": 50, "seed": 3})
    assert again.content == small.content and again.headers["etag"] == small.headers["etag"]
    direct = serialize(generate_churn_dataset(50, 3), "csv")
    assert small.content == direct  # version 0 is exactly the generator's output
    drifted = client.get(server.url + "/data.csv", params={"rows": 50, "seed": 3, "drift": 1})
    assert drifted.content != small.content
    dirty = client.get(server.url + "/data.jsonl", params={"rows": 400, "malformed_rate": 0.5, "missing_rate": 0})
    frame = pd.DataFrame([json.loads(line) for line in dirty.text.splitlines()])
    assert invalid_rows(frame).mean() > 0.3
    for bad in ({"rows": "many"}, {"rows": -1}, {"drift": "perhaps"}, {"missing_rate": 2}, {"seed": "x"}, {"seed": -1}):
        response = client.get(server.url + "/data.csv", params=bad)
        assert response.status_code == 400 and "error" in response.json()


def _records(page_rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(page_rows)


def test_cursor_pagination(server: DataSourceServer, client: httpx.Client) -> None:
    expected = [json.loads(line) for line in serialize(server.dataset(), "jsonl").decode().splitlines()]
    first = client.get(server.url + "/api/records", params={"page_size": 500})
    assert first.headers["content-type"] == "application/json" and first.headers["etag"]
    body = first.json()
    assert body["total"] == 1200 and len(body["records"]) == 500
    assert body["next"].startswith(server.url + "/api/records?") and "cursor=" in body["next"]
    collected, pages, url = list(body["records"]), 1, body["next"]
    second_url = url
    while url:
        page = client.get(url).json()
        collected += page["records"]
        pages += 1
        url = page["next"]
        if url:
            # next_cursor is the same position as the next link.
            assert f"cursor={page['next_cursor']}" in url
    assert pages == 3 and collected == expected
    assert client.get(second_url).json() == client.get(second_url).json()  # stable pages
    assert any(value is None for record in collected for value in record.values())  # NaN -> null

    assert (
        client.get(
            server.url + "/api/records", headers={"If-None-Match": first.headers["etag"]}, params={"page_size": 500}
        ).status_code
        == 304
    )
    assert client.get(server.url + "/api/records", params={"cursor": "garbage!"}).status_code == 400
    assert client.get(server.url + "/api/records", params={"page_size": 0}).status_code == 400
    server.bump_version()
    stale = client.get(second_url)
    assert stale.status_code == 410 and "changed" in stale.json()["error"]


def test_next_link_pagination(server: DataSourceServer, client: httpx.Client) -> None:
    expected = [json.loads(line) for line in serialize(server.dataset(), "jsonl").decode().splitlines()]
    collected: list[dict] = []
    url: str | None = server.url + "/api/pages?page_size=250"
    pages = 0
    while url:
        page = client.get(url).json()
        assert set(page) == {"data", "links", "meta"}
        collected += page["data"]
        url = page["links"]["next"]
        pages += 1
    assert pages == 5 and collected == expected
    beyond = client.get(server.url + "/api/pages", params={"page": 99, "page_size": 250}).json()
    assert beyond["data"] == [] and beyond["links"]["next"] is None
    assert client.get(server.url + "/api/pages", params={"page": 0}).status_code == 400


def test_injected_failures_delay_and_chunking(server: DataSourceServer, client: httpx.Client) -> None:
    server.fail_next(2, 503)
    assert client.get(server.url + "/health").status_code == 200  # health is never failed
    assert [client.get(server.url + "/data.csv").status_code for _ in range(3)] == [503, 503, 200]
    server.fail_next(1, 429)
    limited = client.get(server.url + "/api/records")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "0"
    with pytest.raises(ValueError):
        server.fail_next(1, 200)

    server.delay_seconds = 0.3
    started = time.perf_counter()
    assert client.get(server.url + "/data.csv").status_code == 200
    assert time.perf_counter() - started >= 0.3
    server.delay_seconds = 0

    server.chunked = True
    chunked = client.get(server.url + "/data.csv")
    assert "content-length" not in chunked.headers and chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.content == serialize(server.dataset(), "csv")
    statuses = [r.status for r in server.requests if r.path.startswith("/data.csv")]
    assert statuses[:3] == [503, 503, 200]


def test_broken_csv_does_not_parse(server: DataSourceServer, client: httpx.Client) -> None:
    response = client.get(server.url + "/broken.csv")
    assert response.status_code == 200 and response.content == BROKEN_CSV
    with pytest.raises((pd.errors.ParserError, UnicodeDecodeError)):
        pd.read_csv(io.BytesIO(response.content), dtype=str)
    # Even without the garbage bytes, the unbalanced quote and ragged rows break the parser.
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(io.BytesIO(BROKEN_CSV.split(b"\xff")[0]), dtype=str)


def test_cli_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlpipeline.dev.datasource", "--port", "0", "--rows", "300", "--seed", "3", "--drift"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        assert httpx.get(url + "/health", timeout=5).json()["rows"] == 300
        body = httpx.get(url + "/data.csv", timeout=5).content
        assert body == serialize(generate_churn_dataset(300, 3, drift=True), "csv")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
