"""Snapshots: conditional requests, unchanged sources, reruns, atomicity and stale temp directories."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mlpipeline.dev.datasource import DataSourceServer
from mlpipeline.stages.crawl import CrawlError, crawl
from mlpipeline.storage import DataLayout, sha256_file
from tests.stages.crawl.support import ROWS, assert_no_temp_files, data_requests, make_config

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


# --- reruns, failed runs and temp directories -----------------------------------------------------------------------


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


def test_failures_leave_the_next_crawl_unaffected(tmp_path: Path, server: DataSourceServer) -> None:
    config = make_config(tmp_path, f"{server.url}/data.csv", crawl_max_retries=0)
    server.fail_next(1, 500)
    with pytest.raises(CrawlError):
        crawl(config, "run_1")
    result = crawl(config, "run_1")  # the same run succeeds once the source recovers
    assert result.rows == ROWS and result.unchanged is False
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == ["run_1"]
    assert_no_temp_files(tmp_path)


def test_stale_temp_directories_of_the_run_are_removed(tmp_path: Path, server: DataSourceServer) -> None:
    raw = tmp_path / "data" / "raw"
    stale = raw / ".run_1.abc123.tmp"
    (stale / "partial").mkdir(parents=True)
    (stale / "partial" / "data.csv").write_text("half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    crawl(make_config(tmp_path, f"{server.url}/data.csv"), "run_1")
    assert sorted(p.name for p in raw.iterdir()) == ["run_1"]
