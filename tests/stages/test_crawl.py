"""The crawl stage against a live DataSourceServer on 127.0.0.1 (no HTTP mocks)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.dev.datasource import COLUMNS, DataSourceServer, serialize
from mlpipeline.stages.crawl import CrawlError, CrawlResult, crawl, detect_format, iter_raw, read_raw
from mlpipeline.storage import DataLayout, sha256_file

ROWS = 1500


@pytest.fixture
def server() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=ROWS, seed=7) as running:
        yield running


def make_config(tmp_path: Path, url: str, **overrides: Any) -> PipelineConfig:
    settings: dict[str, Any] = {
        "crawl_url": url,
        "data_dir": str(tmp_path / "data"),
        "crawl_backoff_seconds": 0.02,
        "crawl_max_retries": 2,
        "crawl_timeout_seconds": 5,
    }
    settings.update(overrides)
    return build_config(settings)


def data_requests(server: DataSourceServer, prefix: str = "/") -> list[Any]:
    return [r for r in server.requests if r.path.startswith(prefix) and not r.path.startswith("/health")]


def assert_nothing_left(tmp_path: Path) -> None:
    """No snapshot and no half-built temp directory anywhere under raw/."""
    raw = tmp_path / "data" / "raw"
    leftovers = [p.name for p in raw.iterdir()] if raw.exists() else []
    assert leftovers == [], leftovers


def assert_no_temp_files(tmp_path: Path) -> None:
    temps = [str(p) for p in (tmp_path / "data").rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert temps == []


# --- formats ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "auto"])
def test_single_file_formats(tmp_path: Path, server: DataSourceServer, fmt: str, declared: bool) -> None:
    config = make_config(tmp_path, f"{server.url}/data.{fmt}", crawl_format=fmt if declared else "auto")
    result = crawl(config, "run_1")

    direct = httpx.get(f"{server.url}/data.{fmt}")
    body = direct.content
    snapshot = Path(result.snapshot_dir)
    assert snapshot == DataLayout.of(tmp_path / "data").raw("run_1")
    assert result.data_path == str(snapshot / f"data.{fmt}")
    assert Path(result.data_path).read_bytes() == body  # stored exactly as received
    assert result.format == fmt and result.rows == ROWS and result.pages == 1
    assert result.bytes == len(body) == Path(result.data_path).stat().st_size
    assert result.sha256 == hashlib.sha256(body).hexdigest() == sha256_file(result.data_path)
    assert result.unchanged is False and result.reused_from is None
    assert result.source_url == config.crawl_url

    manifest = json.loads(Path(result.manifest_path).read_text())
    assert manifest["source_url"] == config.crawl_url
    assert manifest["format"] == fmt and manifest["rows"] == ROWS and manifest["pages"] == 1
    assert manifest["bytes"] == len(body) and manifest["sha256"] == result.sha256
    assert manifest["http_status"] == 200 and manifest["unchanged"] is False and manifest["reused_from"] is None
    assert manifest["etag"] == direct.headers["etag"]
    assert manifest["last_modified"] == direct.headers["last-modified"]
    assert set(manifest["schema"]) == set(COLUMNS)
    fetched_at = datetime.fromisoformat(manifest["fetched_at"])
    assert fetched_at.utcoffset() is not None and fetched_at.utcoffset().total_seconds() == 0
    assert sorted(p.name for p in snapshot.iterdir()) == sorted([f"data.{fmt}", "manifest.json"])
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert CrawlResult.from_dict(result.to_dict()) == result
    assert_no_temp_files(tmp_path)


def test_read_raw_gives_text_columns_and_the_same_values_in_every_format(
    tmp_path: Path, server: DataSourceServer
) -> None:
    server.malformed_rate = 0.1  # plenty of "abc" in numeric columns, unknown categories, bad dates
    frames = {}
    for fmt in ("csv", "jsonl", "parquet"):
        result = crawl(make_config(tmp_path, f"{server.url}/data.{fmt}"), f"run_{fmt}")
        frame = read_raw(result.data_path, result.format)
        assert list(frame.columns) == list(COLUMNS) and len(frame) == ROWS
        assert all(pd.api.types.is_object_dtype(dtype) for dtype in frame.dtypes)
        values = frame.to_numpy().ravel()
        assert all(isinstance(v, str) or (isinstance(v, float) and np.isnan(v)) for v in values)
        chunks = list(iter_raw(result.data_path, result.format, chunk_rows=400))
        assert [len(c) for c in chunks] == [400, 400, 400, 300]
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), frame)
        frames[fmt] = frame
    csv = frames["csv"]
    assert csv["contract"].isna().any()  # blanks are NaN
    for fmt in ("jsonl", "parquet"):
        other = frames[fmt]
        for column in COLUMNS:
            numbers_csv = pd.to_numeric(csv[column], errors="coerce")
            numbers_other = pd.to_numeric(other[column], errors="coerce")
            if numbers_csv.notna().any():  # numeric column: same numbers, and same non-numeric text
                np.testing.assert_allclose(numbers_csv, numbers_other, equal_nan=True)
                text = numbers_csv.isna() & csv[column].notna()
                assert csv.loc[text, column].equals(other.loc[text, column]), (fmt, column)
            else:
                assert csv[column].equals(other[column]), (fmt, column)


def test_detect_format() -> None:
    assert detect_format("text/csv; charset=utf-8", "http://x/whatever") == "csv"
    assert detect_format("application/x-ndjson", "http://x/a.csv") == "jsonl"  # Content-Type wins
    assert detect_format("application/vnd.apache.parquet", "http://x/data") == "parquet"
    assert detect_format("application/json", "http://x/api") == "json_api"
    assert detect_format("application/octet-stream", "http://x/dump.parquet?sig=1") == "parquet"
    assert detect_format(None, "http://x/file.ndjson") == "jsonl"
    assert detect_format("application/octet-stream", "http://x/blob", b"PAR1\x15\x04") == "parquet"
    assert detect_format("application/octet-stream", "http://x/blob", b"a,b\n") is None


# --- JSON APIs ----------------------------------------------------------------------------------------------------


def expected_records(server: DataSourceServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in serialize(server.dataset(), "jsonl").decode().splitlines()]


@pytest.mark.parametrize("next_links", [True, False], ids=["next-link", "cursor-only"])
def test_json_api_cursor_pagination(tmp_path: Path, server: DataSourceServer, next_links: bool) -> None:
    server.next_links = next_links
    config = make_config(tmp_path, f"{server.url}/api/records", crawl_format="json_api", crawl_page_size=400)
    result = crawl(config, "run_1")
    assert result.format == "jsonl" and result.rows == ROWS and result.pages == 4
    records = [json.loads(line) for line in Path(result.data_path).read_text().splitlines()]
    assert records == expected_records(server)
    paths = [r.path for r in data_requests(server, "/api/records")]
    assert len(paths) == 4 and all("page_size=400" in p for p in paths)
    assert "cursor=" not in paths[0] and all("cursor=" in p for p in paths[1:])
    manifest = json.loads(Path(result.manifest_path).read_text())
    assert manifest["source_format"] == "json_api" and manifest["pages"] == 4 and manifest["etag"]
    assert result.sha256 == sha256_file(result.data_path)


def test_json_api_next_links_and_data_field(tmp_path: Path, server: DataSourceServer) -> None:
    # crawl_records_field is "records" (default) but /api/pages puts rows in "data": accepted as documented.
    config = make_config(tmp_path, f"{server.url}/api/pages", crawl_format="json_api", crawl_page_size=700)
    result = crawl(config, "run_1")
    assert result.rows == ROWS and result.pages == 3
    records = [json.loads(line) for line in Path(result.data_path).read_text().splitlines()]
    assert records == expected_records(server)
    assert [r.path.split("page=")[-1][:1] for r in data_requests(server, "/api/pages")][1:] == ["2", "3"]


def test_auto_detects_a_json_api(tmp_path: Path, server: DataSourceServer) -> None:
    result = crawl(make_config(tmp_path, f"{server.url}/api/records?page_size=600"), "run_1")
    assert result.format == "jsonl" and result.rows == ROWS and result.pages == 3
    manifest = json.loads(Path(result.manifest_path).read_text())
    assert manifest["source_format"] == "json_api" and manifest["crawl_format"] == "auto"


def test_records_field_is_configurable(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(tmp_path, f"{server.url}/api/records", crawl_format="json_api", crawl_records_field="rows")
    with pytest.raises(CrawlError, match=r"no list of records in 'rows'.*crawl_records_field"):
        crawl(config, "run_1")
    assert_nothing_left(tmp_path)


def test_too_many_pages(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(
        tmp_path, f"{server.url}/api/records", crawl_format="json_api", crawl_page_size=100, crawl_max_pages=3
    )
    with pytest.raises(CrawlError, match="crawl_max_pages=3") as error:
        crawl(config, "run_1")
    assert server.url in str(error.value)
    assert len(data_requests(server)) == 3
    assert_nothing_left(tmp_path)


# --- unchanged sources ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"), [("/data.csv", "csv"), ("/data.parquet", "auto"), ("/api/records", "json_api")]
)
def test_not_modified_then_changed(tmp_path: Path, server: DataSourceServer, path: str, fmt: str) -> None:
    config = make_config(tmp_path, server.url + path, crawl_format=fmt, crawl_page_size=500)
    first = crawl(config, "run_1")
    etag = json.loads(Path(first.manifest_path).read_text())["etag"]

    second = crawl(config, "run_2")
    last = data_requests(server)[-1]
    assert last.status == 304 and last.headers.get("If-None-Match") == etag
    assert "If-Modified-Since" in last.headers
    assert second.unchanged is True and second.reused_from == first.snapshot_dir
    assert second.snapshot_dir != first.snapshot_dir and Path(second.data_path).is_file()
    assert (second.sha256, second.rows, second.bytes, second.format) == (
        first.sha256,
        first.rows,
        first.bytes,
        first.format,
    )
    assert sha256_file(second.data_path) == first.sha256
    manifest = json.loads(Path(second.manifest_path).read_text())
    assert manifest["http_status"] == 304 and manifest["unchanged"] is True
    assert manifest["reused_from"] == first.snapshot_dir
    # The state remembers the source per URL hash.
    state_files = list((DataLayout.of(config.data_dir).state / "crawl").glob("*.json"))
    assert len(state_files) == 1 and json.loads(state_files[0].read_text())["snapshot_dir"] == second.snapshot_dir

    server.bump_version()
    third = crawl(config, "run_3")
    assert third.unchanged is False and third.reused_from is None
    assert third.sha256 != first.sha256 and third.rows == ROWS
    assert json.loads(Path(third.manifest_path).read_text())["http_status"] == 200
    assert_no_temp_files(tmp_path)


def test_unchanged_by_content_hash_without_validators(tmp_path: Path, server: DataSourceServer) -> None:
    server.conditional = False  # no ETag / Last-Modified: only the hash can tell
    config = make_config(tmp_path, f"{server.url}/data.jsonl")
    first = crawl(config, "run_1")
    second = crawl(config, "run_2")
    assert data_requests(server)[-1].headers == {}  # nothing to be conditional on
    assert second.unchanged is True and second.reused_from == first.snapshot_dir
    manifest = json.loads(Path(second.manifest_path).read_text())
    assert manifest["http_status"] == 200 and manifest["etag"] is None
    # Same bytes: the data file is shared with the previous snapshot, not stored twice.
    assert Path(second.data_path).read_bytes() == Path(first.data_path).read_bytes()
    assert Path(second.data_path).stat().st_ino == Path(first.data_path).stat().st_ino

    server.drift = True
    assert crawl(config, "run_3").unchanged is False


def test_missing_previous_snapshot_means_a_full_crawl(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(tmp_path, f"{server.url}/data.csv")
    first = crawl(config, "run_1")
    for path in Path(first.snapshot_dir).iterdir():
        path.unlink()
    Path(first.snapshot_dir).rmdir()
    second = crawl(config, "run_2")
    assert data_requests(server)[-1].headers == {}  # the history was unusable, so no conditional request
    assert second.unchanged is False and second.sha256 == first.sha256


def test_rerunning_a_run_returns_its_snapshot_without_fetching(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(tmp_path, f"{server.url}/data.parquet")
    first = crawl(config, "run_1")
    requests_before = len(server.requests)
    server.bump_version()
    server.close()  # the source is even gone
    again = crawl(config, "run_1")
    assert again == first
    assert len(server.requests) == requests_before


def test_run_must_be_a_directory_key(tmp_path: Path, server: DataSourceServer) -> None:
    with pytest.raises(ValueError, match="run_key"):
        crawl(make_config(tmp_path, f"{server.url}/data.csv"), "manual__2026-01-01T00:00:00+00:00")


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


@pytest.mark.parametrize(
    ("path", "fmt", "chunked"),
    [
        ("/data.csv", "csv", False),
        ("/data.csv", "csv", True),
        ("/data.parquet", "auto", True),
        ("/api/records", "json_api", False),
    ],
)
def test_size_limit(tmp_path: Path, server: DataSourceServer, path: str, fmt: str, chunked: bool) -> None:
    server.chunked = chunked  # without Content-Length the limit must be enforced while streaming
    config = make_config(tmp_path, server.url + path, crawl_format=fmt, crawl_max_bytes=20_000, crawl_page_size=100)
    with pytest.raises(CrawlError, match="crawl_max_bytes=20000") as error:
        crawl(config, "run_1")
    assert error.value.retryable is False
    if fmt == "csv" and not chunked:  # announced size: refused before downloading
        assert "Content-Length" in str(error.value)
    assert_nothing_left(tmp_path)
    assert not (tmp_path / "data" / "state").exists()


@pytest.mark.parametrize("fmt", ["csv", "auto"])
def test_malformed_csv(tmp_path: Path, server: DataSourceServer, fmt: str) -> None:
    url = f"{server.url}/broken.csv"
    with pytest.raises(CrawlError, match="could not be parsed") as error:
        crawl(make_config(tmp_path, url, crawl_format=fmt), "run_1")
    assert url in str(error.value) and error.value.retryable is False
    assert len(data_requests(server)) == 1  # bad content is not retried
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "auto", "json_api"])
def test_html_is_not_data(tmp_path: Path, server: DataSourceServer, fmt: str) -> None:
    with pytest.raises(CrawlError, match="HTML"):
        crawl(make_config(tmp_path, server.url + "/", crawl_format=fmt), "run_1")
    assert_nothing_left(tmp_path)


def test_wrong_declared_format(tmp_path: Path, server: DataSourceServer) -> None:
    with pytest.raises(CrawlError, match="parquet body could not be parsed"):
        crawl(make_config(tmp_path, f"{server.url}/data.csv", crawl_format="parquet"), "run_1")
    with pytest.raises(CrawlError, match="not valid JSON"):
        crawl(make_config(tmp_path, f"{server.url}/data.csv", crawl_format="json_api"), "run_1")
    assert_nothing_left(tmp_path)


def test_failures_leave_the_next_crawl_unaffected(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(tmp_path, f"{server.url}/data.csv", crawl_max_retries=0)
    server.fail_next(1, 500)
    with pytest.raises(CrawlError):
        crawl(config, "run_1")
    result = crawl(config, "run_1")  # the same run succeeds once the source recovers
    assert result.rows == ROWS and result.unchanged is False
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == ["run_1"]
    assert_no_temp_files(tmp_path)


# --- reading snapshots ------------------------------------------------------------------------------------------


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return [None if isinstance(v, float) and np.isnan(v) else v for v in frame[name]]


def test_read_raw_jsonl_keeps_the_source_text(tmp_path: Path) -> None:
    uniform = _jsonl(
        tmp_path / "uniform.jsonl",
        [
            {"a": 1, "b": "2024-05-20", "c": True, "d": {"x": 1}, "e": 1.5, "t": "2024-05-20T10:00:00"},
            {"a": 2, "b": "2024-05-21", "c": None, "d": None, "e": None, "t": None},
        ],
    )
    # "a" mixes numbers and text: Arrow refuses, pandas reads it.
    mixed = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"a": 1, "b": "2024-05-20", "c": True, "d": {"x": 1}, "e": 1.5, "t": "2024-05-20T10:00:00"},
            {"a": "abc", "b": "2024-05-21", "c": None, "d": None, "e": None, "t": None},
        ],
    )
    for path, second_a in ((uniform, "2"), (mixed, "abc")):
        frame = read_raw(path, "jsonl")
        assert _column(frame, "a") == ["1", second_a]
        assert _column(frame, "b") == ["2024-05-20", "2024-05-21"]  # not turned into timestamps
        assert _column(frame, "t") == ["2024-05-20T10:00:00", None]
        assert _column(frame, "c") == ["true", None]
        assert _column(frame, "d") == ['{"x": 1}', None]
        assert _column(frame, "e") == ["1.5", None]
        pd.testing.assert_frame_equal(pd.concat(iter_raw(path, "jsonl", chunk_rows=1)), frame)


def test_iter_raw_jsonl_falls_back_mid_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlpipeline.stages.crawl as crawl_module

    # The type of "a" changes after many lines: the streaming fast path fails after delivering some chunks,
    # and the pandas path must continue exactly where it stopped.
    records = [{"i": i, "a": None if i < 2000 else f"x{i}"} for i in range(3000)]
    path = _jsonl(tmp_path / "late.jsonl", records)
    monkeypatch.setattr(crawl_module, "_JSON_BLOCK", 4096)
    with caplog.at_level(logging.DEBUG, logger="mlpipeline.stages.crawl"):
        chunks = list(iter_raw(path, "jsonl", chunk_rows=500))
    assert "reading it with pandas" in caplog.text  # the fast path really gave up half-way
    frame = pd.concat(chunks)
    assert [len(c) for c in chunks][:2] == [500, 500]
    assert list(frame["i"]) == [str(i) for i in range(3000)]
    assert frame.index.equals(pd.RangeIndex(3000))
    assert _column(frame, "a") == [None] * 2000 + [f"x{i}" for i in range(2000, 3000)]


def test_stale_temp_directories_of_the_run_are_removed(tmp_path: Path, server: DataSourceServer) -> None:
    raw = tmp_path / "data" / "raw"
    stale = raw / ".run_1.abc123.tmp"
    (stale / "partial").mkdir(parents=True)
    (stale / "partial" / "data.csv").write_text("half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    crawl(make_config(tmp_path, f"{server.url}/data.csv"), "run_1")
    assert sorted(p.name for p in raw.iterdir()) == ["run_1"]
