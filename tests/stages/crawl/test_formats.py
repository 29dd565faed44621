"""Format detection from Content-Type, URL suffix and magic bytes."""

from __future__ import annotations

from mlpipeline.stages.crawl import detect_format


def test_detect_format() -> None:
    assert detect_format("text/csv; charset=utf-8", "http://x/whatever") == "csv"
    assert detect_format("application/x-ndjson", "http://x/a.csv") == "jsonl"  # Content-Type wins
    assert detect_format("application/vnd.apache.parquet", "http://x/data") == "parquet"
    assert detect_format("application/json", "http://x/api") == "json_api"
    assert detect_format("application/octet-stream", "http://x/dump.parquet?sig=1") == "parquet"
    assert detect_format(None, "http://x/file.ndjson") == "jsonl"
    assert detect_format("application/octet-stream", "http://x/blob", b"PAR1\x15\x04") == "parquet"
    assert detect_format("application/octet-stream", "http://x/blob", b"a,b\n") is None
