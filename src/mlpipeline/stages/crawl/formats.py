"""Which format a response holds: from its Content-Type, else the URL suffix, else the parquet magic bytes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

_CONTENT_TYPES: dict[str, str] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/comma-separated-values": "csv",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "application/json-lines": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/json": "json_api",
    "text/json": "json_api",
}
_SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json_api",
}


def detect_format(content_type: str | None, url: str, head: bytes = b"") -> str | None:
    """csv | jsonl | parquet | json_api from Content-Type, else URL suffix, else magic bytes; None if unknown."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in _CONTENT_TYPES:
        return _CONTENT_TYPES[media_type]
    if media_type.endswith("+json"):
        return "json_api"
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if head.startswith(b"PAR1"):
        return "parquet"
    return None


def looks_like_html(content_type: str | None, head: bytes) -> bool:
    """An HTML page (an error or login page, say) where data was expected."""
    if (content_type or "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html"))
