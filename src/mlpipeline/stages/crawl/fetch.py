"""Downloading one crawl's body into the snapshot directory being built.

* ``csv`` / ``jsonl`` / ``parquet``: one GET, the body stored as received in ``data.<format>``.
* ``json_api``: pages of JSON objects, their records written one per line to ``data.jsonl``. The rows of a page
  are the list in ``crawl_records_field``, or, if the page has no such field, in ``data``; a page that is itself a
  JSON list is one final page. The next page is the ``next`` link (top-level ``next`` or ``links.next``, absolute
  or relative), else ``next_cursor`` sent back as the ``cursor`` query parameter; no link and no cursor ends the
  crawl. More than ``crawl_max_pages`` pages is an error, and so is a ``next`` link to an origin the crawl may not
  reach (see :mod:`.guards`).
* ``auto``: the format from :func:`~mlpipeline.stages.crawl.formats.detect_format`; JSON means ``json_api``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from mlpipeline.config import PipelineConfig
from mlpipeline.stages.crawl.formats import detect_format, looks_like_html
from mlpipeline.stages.crawl.http_client import Budget, HttpClient, with_query
from mlpipeline.stages.crawl.result import DATA_FILES, CrawlError

_HEAD_BYTES = 512  # enough to sniff HTML and the parquet magic bytes


def _head(chunks: Iterator[bytes]) -> bytes:
    """The first chunks of a body, joined until at least ``_HEAD_BYTES`` (or the whole body, if shorter)."""
    head = b""
    while len(head) < _HEAD_BYTES:
        chunk = next(chunks, None)
        if chunk is None:
            break
        head += chunk
    return head


@dataclass
class Fetched:
    """What the first response (and, for an API, the pages after it) told us."""

    status: int
    not_modified: bool = False
    source_format: str | None = None  # csv | jsonl | parquet | json_api
    etag: str | None = None
    last_modified: str | None = None
    sha256: str = ""
    bytes: int = 0
    pages: int = 0
    page: Any = None  # json_api: the first page, parsed


class Fetcher:
    """Writes the body of ``config.crawl_url`` into ``directory`` within the ``crawl_max_bytes`` budget."""

    def __init__(self, config: PipelineConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.http = HttpClient(config)
        self.budget = Budget(config.crawl_max_bytes)

    def close(self) -> None:
        self.http.close()

    def first(self, url: str, headers: dict[str, str]) -> Fetched:
        """The (conditional) first request: a whole single-file body, or an API's first page (parsed, not stored)."""
        requested = self.config.crawl_format
        if requested == "json_api":
            return self.http.get(url, headers, lambda response: self._first_page(response, url))
        file_format = None if requested == "auto" else requested
        return self.http.get(url, headers, lambda response: self._first_response(response, url, file_format))

    # --- single-file formats --------------------------------------------------------------------------------
    def _first_response(self, response: httpx.Response, url: str, fmt: str | None) -> Fetched:
        fetched = Fetched(
            status=response.status_code,
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
        )
        if response.status_code == 304:
            fetched.not_modified = True
            return fetched
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.config.crawl_max_bytes:
            raise CrawlError(
                f"{url}: Content-Length {length} exceeds crawl_max_bytes={self.config.crawl_max_bytes};"
                " raise crawl_max_bytes if this size is expected"
            )
        self.budget.used = 0  # a retried attempt starts over
        self._stream_file(response, url, fmt, fetched)
        return fetched

    def _stream_file(self, response: httpx.Response, url: str, fmt: str | None, fetched: Fetched) -> None:
        """Stream the body to ``data.<fmt>``, hashing and counting as it arrives."""
        chunks = self.http.body(response, url)
        head = _head(chunks)
        content_type = response.headers.get("Content-Type")
        if looks_like_html(content_type, head):
            raise CrawlError(f"{url} returned an HTML page (Content-Type {content_type!r}), not data; check crawl_url")
        if fmt is None:
            fmt = detect_format(content_type, url, head)
            if fmt is None:
                raise CrawlError(
                    f"{url}: cannot tell the data format (Content-Type {content_type!r}, no known file suffix);"
                    " set crawl_format to csv, jsonl, parquet or json_api"
                )
        self.budget.take(len(head), url)
        if fmt == "json_api":  # auto mode found JSON: it is the first page of an API
            fetched.source_format = "json_api"
            fetched.page = self._parse_page(head + b"".join(self._limited(chunks, url)), url)
            return
        fetched.source_format = fmt
        digest = hashlib.sha256()
        size = 0
        with open(self.directory / DATA_FILES[fmt], "wb") as handle:
            for chunk in itertools.chain([head], self._limited(chunks, url)):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        fetched.sha256, fetched.bytes = digest.hexdigest(), size

    def _limited(self, chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
        for chunk in chunks:
            self.budget.take(len(chunk), url)
            yield chunk

    # --- paginated JSON API ---------------------------------------------------------------------------------
    def _first_page(self, response: httpx.Response, url: str) -> Fetched:
        fetched = Fetched(response.status_code, response.status_code == 304, "json_api")
        fetched.etag, fetched.last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if not fetched.not_modified:
            self.budget.used = 0  # a retried attempt starts over
            fetched.page = self._parse_page(b"".join(self._limited(self.http.body(response, url), url)), url)
        return fetched

    def _parse_page(self, body: bytes, url: str) -> Any:
        if looks_like_html(None, body[:256]):
            raise CrawlError(f"{url} returned an HTML page, not a JSON API page; check crawl_url")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser can go; a retry would only get the same page.
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise CrawlError(
                f"{url}: the response is not valid JSON ({reason}); check crawl_url / crawl_format"
            ) from None

    def _read_page(self, url: str) -> Any:
        def consume(response: httpx.Response) -> Any:
            if response.status_code == 304:
                raise CrawlError(f"GET {url} answered 304 to an unconditional request")
            used = self.budget.used
            try:
                return self._parse_page(b"".join(self._limited(self.http.body(response, url), url)), url)
            except httpx.HTTPError:
                self.budget.used = used  # the retry re-reads this page
                raise

        return self.http.get(url, {}, consume)

    def _records(self, page: Any, url: str) -> list[Any]:
        if isinstance(page, list):
            return page
        if not isinstance(page, dict):
            raise CrawlError(f"{url}: a JSON API page must be an object or a list, got {type(page).__name__}")
        field = self.config.crawl_records_field
        records = page.get(field)
        if records is None and field != "data":
            records = page.get("data")
        if not isinstance(records, list):
            raise CrawlError(
                f"{url}: the page has no list of records in {field!r} (or 'data'); its fields are"
                f" {sorted(page)[:20]}; set crawl_records_field"
            )
        return records

    def _next_url(self, page: Any, url: str) -> str | None:
        if not isinstance(page, dict):
            return None
        link = page.get("next")
        if link is None and isinstance(page.get("links"), dict):
            link = page["links"].get("next")
        if isinstance(link, str) and link:
            return urljoin(url, link)
        cursor = page.get("next_cursor")
        if cursor not in (None, ""):
            return with_query(url, cursor=str(cursor), page_size=str(self.config.crawl_page_size))
        return None

    def paginate(self, first_url: str, fetched: Fetched) -> None:
        """Write the records of the first page and all pages after it to data.jsonl; fills pages, bytes, sha256."""
        digest = hashlib.sha256()
        size = pages = 0
        url, page = first_url, fetched.page
        seen = {first_url}
        with open(self.directory / DATA_FILES["jsonl"], "wb") as handle:
            while True:
                pages += 1
                for line in self._record_lines(page, url):
                    handle.write(line)
                    digest.update(line)
                    size += len(line)
                next_url = self._next_url(page, url)
                if next_url is None:
                    break
                self._check_next(first_url, next_url, pages, seen)
                seen.add(next_url)
                url, page = next_url, self._read_page(next_url)
        fetched.pages, fetched.bytes, fetched.sha256 = pages, size, digest.hexdigest()

    def _record_lines(self, page: Any, url: str) -> Iterator[bytes]:
        for record in self._records(page, url):
            if not isinstance(record, dict):
                raise CrawlError(f"{url}: records must be JSON objects, got {type(record).__name__}")
            yield (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def _check_next(self, first_url: str, next_url: str, pages: int, seen: set[str]) -> None:
        self.http.origins.check(next_url, source=first_url, how=f"the next link of page {pages}")
        if pages >= self.config.crawl_max_pages:
            raise CrawlError(
                f"{first_url}: more than crawl_max_pages={self.config.crawl_max_pages} pages; raise"
                " crawl_max_pages or crawl_page_size if the source really is that large"
            )
        if next_url in seen:
            raise CrawlError(f"{first_url}: pagination loops back to {next_url}; the source is misbehaving")
