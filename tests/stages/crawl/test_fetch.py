"""Fetching bodies and API pages from a live DataSourceServer: formats, pagination, bad content, size limits."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlpipeline.dev.datasource import COLUMNS, DataSourceServer, serialize
from mlpipeline.stages.crawl import CrawlError, CrawlResult, crawl
from mlpipeline.storage import DataLayout, sha256_file
from tests.stages.crawl.support import ROWS, assert_no_temp_files, assert_nothing_left, data_requests, make_config

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


# --- bad content and size limits ------------------------------------------------------------------------------------


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
