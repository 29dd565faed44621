"""Attacks on the crawl from a hostile source: each is refused, and nothing is written or fetched elsewhere.

Sources are real HTTP servers on 127.0.0.1 (:class:`~tests.stages.crawl.hostile.HostileSource`); another
server's port is another origin.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.stages.crawl import CrawlError, crawl
from mlpipeline.stages.etl import etl
from tests.stages.crawl.hostile import HostileSource, redirect, send, serve
from tests.stages.crawl.support import assert_nothing_left, make_config
from tests.stages.etl.support import SCHEMA, good_rows

CSV = b"id,amount,label\n1,2.5,0\n2,3.5,1\n"
SECRET = b"secret,internal\nroot,hunter2\n"


def assert_refused_cleanly(tmp_path: Path) -> None:
    """No snapshot, no temp directory and no crawl history were written."""
    assert_nothing_left(tmp_path)
    assert not (tmp_path / "data" / "state").exists()


# --- redirects and next links -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_origin_is_refused(tmp_path: Path, status: int) -> None:
    with HostileSource({"/data.csv": serve(SECRET, "text/csv")}) as internal, HostileSource() as source:
        source.route("/data.csv", redirect(f"{internal.url}/data.csv", status))
        with pytest.raises(CrawlError) as error:
            crawl(make_config(tmp_path, f"{source.url}/data.csv"), "run_1")
    message = str(error.value)
    assert f"{internal.url}:" not in message  # the origin is named as scheme://host:port ...
    assert internal.url in message and "crawl_allowed_origins" in message and f"HTTP {status} redirect" in message
    assert "redirect body" not in message and "hunter2" not in message  # ... and no body is quoted
    assert error.value.retryable is False
    assert internal.requests == [] and source.requests == ["/data.csv"]
    assert_refused_cleanly(tmp_path)


@pytest.mark.parametrize(
    "target",
    ["https://{host}/data.csv", "http://localhost:{port}/data.csv", "file:///etc/passwd", "//169.254.169.254/latest"],
    ids=["other-scheme", "other-host-same-port", "file-url", "scheme-relative-metadata-ip"],
)
def test_redirects_change_of_scheme_or_host_is_another_origin(tmp_path: Path, target: str) -> None:
    with HostileSource() as source:
        host, port = source.server.server_address[:2]
        source.route("/data.csv", redirect(target.format(host=f"{host}:{port}", port=port)))
        with pytest.raises(CrawlError, match="outside the crawl's origin") as error:
            crawl(make_config(tmp_path, f"{source.url}/data.csv"), "run_1")
    assert error.value.retryable is False
    assert source.requests == ["/data.csv"]  # the redirect was not followed, not even back to this server
    assert_refused_cleanly(tmp_path)


def test_redirects_on_the_same_origin_and_to_allowed_origins_are_followed(tmp_path: Path) -> None:
    with HostileSource({"/data.csv": serve(CSV, "text/csv")}) as mirror, HostileSource() as source:
        source.route("/start.csv", redirect("/moved.csv", 301))  # relative: same origin
        source.route("/moved.csv", redirect(f"{mirror.url}/data.csv", 307))
        config = make_config(tmp_path, f"{source.url}/start.csv", crawl_allowed_origins=f"{mirror.url}/")
        result = crawl(config, "run_1")
    assert Path(result.data_path).read_bytes() == CSV and result.rows == 2
    assert source.requests == ["/start.csv", "/moved.csv"] and mirror.requests == ["/data.csv"]
    assert json.loads(Path(result.manifest_path).read_text())["requests"] == 3


def test_a_redirect_loop_stops(tmp_path: Path) -> None:
    routes = {"/a.csv": redirect("/b.csv"), "/b.csv": redirect("/a.csv")}
    with HostileSource(routes) as source, pytest.raises(CrawlError, match="more than 5 redirects") as error:
        crawl(make_config(tmp_path, f"{source.url}/a.csv"), "run_1")
    assert error.value.retryable is False and len(source.requests) == 6
    assert_refused_cleanly(tmp_path)


def page(records: list[dict[str, object]], next_link: str | None) -> bytes:
    return json.dumps({"records": records, "next": next_link}).encode()


def test_next_link_to_another_origin_is_refused(tmp_path: Path) -> None:
    internal_routes = {"/api": serve(page([{"secret": 1}], None), "application/json")}
    with HostileSource(internal_routes) as internal, HostileSource() as source:
        source.route("/api", serve(page([{"id": 1}], f"{internal.url}/api?page=2"), "application/json"))
        with pytest.raises(CrawlError) as error:
            crawl(make_config(tmp_path, f"{source.url}/api", crawl_format="json_api"), "run_1")
    message = str(error.value)
    assert "next link of page 1" in message and internal.url in message and "crawl_allowed_origins" in message
    assert error.value.retryable is False and internal.requests == []
    assert_refused_cleanly(tmp_path)


def test_next_link_to_an_allowed_origin_is_followed(tmp_path: Path) -> None:
    mirror_routes = {"/api": serve(page([{"id": 2}], None), "application/json")}
    with HostileSource(mirror_routes) as mirror, HostileSource() as source:
        source.route("/api", serve(page([{"id": 1}], f"{mirror.url}/api?page=2"), "application/json"))
        allowed = make_config(
            tmp_path, f"{source.url}/api", crawl_format="json_api", crawl_allowed_origins=[mirror.url]
        )
        result = crawl(allowed, "run_1")
    assert result.rows == 2 and result.pages == 2 and mirror.requests == ["/api?page=2"]


# --- the whole-crawl deadline -----------------------------------------------------------------------------------


def trickle(source: HostileSource, *, first: bytes = b"id,amount,label\n", every: float = 0.1) -> None:
    """Route ``/slow.csv``: a promising header, then one byte every ``every`` seconds until the server stops."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/csv")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(first)
        while not source.stopping.wait(every):
            handler.wfile.write(b"1")

    source.route("/slow.csv", route)


def test_a_trickling_source_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    with HostileSource() as source:
        trickle(source)
        config = make_config(tmp_path, f"{source.url}/slow.csv", crawl_deadline_seconds=1.0, crawl_timeout_seconds=5)
        started = time.monotonic()
        with pytest.raises(CrawlError, match=r"did not finish within crawl_deadline_seconds=1\b") as error:
            crawl(config, "run_1")
        elapsed = time.monotonic() - started
    # Each read gets a byte well within crawl_timeout_seconds: only a whole-crawl deadline stops this.
    assert 1.0 <= elapsed < 2.0
    assert error.value.retryable is False and source.requests == ["/slow.csv"]  # not retried
    assert_refused_cleanly(tmp_path)


def test_a_stalled_read_ends_at_the_deadline_not_after_the_read_timeout(tmp_path: Path) -> None:
    with HostileSource() as source:
        trickle(source, every=60)  # the header, then silence
        config = make_config(tmp_path, f"{source.url}/slow.csv", crawl_deadline_seconds=1.0, crawl_timeout_seconds=30)
        started = time.monotonic()
        with pytest.raises(CrawlError, match="crawl_deadline_seconds=1") as error:
            crawl(config, "run_1")
    assert time.monotonic() - started < 2.0 and error.value.retryable is False
    assert_refused_cleanly(tmp_path)


def test_retries_stay_within_the_deadline(tmp_path: Path) -> None:
    with HostileSource({"/data.csv": lambda handler: send(handler, 503, b"busy")}) as source:
        config = make_config(
            tmp_path,
            f"{source.url}/data.csv",
            crawl_deadline_seconds=1.0,
            crawl_max_retries=10,
            crawl_backoff_seconds=0.2,
        )
        started = time.monotonic()
        with pytest.raises(CrawlError, match="no time left for another attempt within crawl_deadline_seconds=1") as e:
            crawl(config, "run_1")
    # Waits of 0.2 and 0.4 s fit, the next 0.8 s would not: it stops before the deadline (plus request time).
    assert time.monotonic() - started < 1.5
    assert len(source.requests) == 3 and "failed after 3 attempt(s)" in str(e.value)
    assert e.value.retryable is True  # the source is down, not hostile: a later try may find it up
    assert_refused_cleanly(tmp_path)


# --- bodies that expand -----------------------------------------------------------------------------------------


def parquet_bytes(table: pa.Table, **options: object) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def dictionary_bomb(rows: int, text_chars: int) -> pa.Table:
    """Every row refers to one long dictionary entry: tiny on disk, ``rows * text_chars`` bytes once read."""
    indices = pa.array(np.zeros(rows, dtype=np.int32))
    return pa.table({"note": pa.DictionaryArray.from_arrays(indices, pa.array(["x" * text_chars]))})


def list_bomb(rows: int, text_chars: int) -> pa.Table:
    """The same, hidden inside a list column (a nested leaf)."""
    values = dictionary_bomb(rows * 4, text_chars).column(0).combine_chunks()
    offsets = pa.array(np.arange(0, rows * 4 + 1, 4, dtype=np.int32))
    return pa.table({"notes": pa.ListArray.from_arrays(offsets, values)})


@pytest.mark.parametrize("make", [dictionary_bomb, list_bomb], ids=["dictionary", "nested-list"])
def test_a_parquet_bomb_is_refused_without_being_expanded(tmp_path: Path, make: object) -> None:
    body = parquet_bytes(make(1_000_000, 100_000), compression="zstd")  # type: ignore[operator]
    assert len(body) < 16_000  # 3 KB (11 KB for the list) on the wire; 100 GB (400 GB) once read
    pool = pa.default_memory_pool()
    peak_before = pool.max_memory()
    with HostileSource({"/data.parquet": serve(body, "application/vnd.apache.parquet")}) as source:
        started = time.monotonic()
        with pytest.raises(CrawlError, match="crawl_max_uncompressed_bytes=1073741824") as error:
            crawl(make_config(tmp_path, f"{source.url}/data.parquet"), "run_1")  # default limits
    assert time.monotonic() - started < 10
    assert pool.max_memory() <= max(peak_before, 256 << 20)  # stopped at the first batch, strings unexpanded
    assert "once its values are decoded" in str(error.value) and error.value.retryable is False
    assert_refused_cleanly(tmp_path)


def test_parquet_row_count_is_checked_from_the_footer(tmp_path: Path) -> None:
    body = parquet_bytes(pa.table({"flag": pa.array(np.zeros(30_000_000, dtype=np.int8))}), compression="zstd")
    assert len(body) < 200_000  # run-length encoded
    with (
        HostileSource({"/data.parquet": serve(body, "application/vnd.apache.parquet")}) as source,
        pytest.raises(CrawlError, match="declares 30000000 rows, more than crawl_max_rows=20000000"),
    ):
        crawl(make_config(tmp_path, f"{source.url}/data.parquet"), "run_1")
    assert_refused_cleanly(tmp_path)


def test_parquet_uncompressed_size_is_checked_from_the_footer(tmp_path: Path) -> None:
    zeros = pa.table({"blob": pa.array([bytes(32 << 20)], pa.binary())})
    body = parquet_bytes(zeros, compression="zstd", use_dictionary=False)
    assert len(body) < 50_000
    with HostileSource({"/data.parquet": serve(body, "application/vnd.apache.parquet")}) as source:
        config = make_config(tmp_path, f"{source.url}/data.parquet", crawl_max_uncompressed_bytes=8 << 20)
        with pytest.raises(CrawlError, match=r"bytes uncompressed, by its metadata; refused before reading it"):
            crawl(config, "run_1")
    assert_refused_cleanly(tmp_path)


def test_a_gzip_encoded_body_counts_as_what_it_expands_to(tmp_path: Path) -> None:
    expanded = b"id,amount,label\n" + b"1,2.5,0\n" * 2_000_000  # 16 MB
    body = gzip.compress(expanded)
    assert len(body) < 100_000
    with HostileSource({"/data.csv": serve(body, "text/csv", Content_Encoding="gzip")}) as source:
        config = make_config(tmp_path, f"{source.url}/data.csv", crawl_max_bytes=1 << 20)
        with pytest.raises(CrawlError, match=f"larger than crawl_max_bytes={1 << 20} bytes"):
            crawl(config, "run_1")
    assert_refused_cleanly(tmp_path)


# --- over-long cells --------------------------------------------------------------------------------------------


def test_over_long_cells_are_quarantined_and_cut_short(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[4] = "4," + "9" * 20_000 + ",2,red,true,2024-01-11,1"  # a declared column
    rows[5] = "5,5,2," + "é" * 10_001 + ",true,2024-01-11,1"  # counted in characters, not bytes
    rows[6] = "i" * 10_000 + ",5,2,red,true,2024-01-11,1"  # 10,000 characters exactly: fine
    body = ("id,amount,count,colour,active,seen,label\n" + "\n".join(rows) + "\n").encode()
    with HostileSource({"/data.csv": serve(body, "text/csv")}) as source:
        snapshot = crawl(make_config(tmp_path, f"{source.url}/data.csv"), "run_1")
    config = make_config(
        tmp_path, "http://127.0.0.1/unused", dataset_schema=SCHEMA, min_rows=10, max_bad_row_fraction=0.5
    )
    result = etl(config, run="run_1", raw_data_path=snapshot.data_path, raw_format=snapshot.format)
    quarantine = pd.read_csv(result.quarantine_path, dtype=str)
    assert dict(zip(quarantine["id"], quarantine["_reason"], strict=True)) == {
        "4": "amount: longer than max_cell_chars=10000",
        "5": "colour: longer than max_cell_chars=10000",
    }
    assert quarantine["amount"].iloc[0] == "9" * 1_000 + "…[cut]"  # the file stays small
    assert quarantine["colour"].iloc[1] == "é" * 1_000 + "…[cut]"
    kept = pd.read_parquet(result.data_path)["id"].tolist()
    assert "4" not in kept and "5" not in kept and "i" * 10_000 in kept
