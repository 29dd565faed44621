"""Crawl stage: fetch the source over HTTP into an immutable raw snapshot ``<data_dir>/raw/<run>/``.

A snapshot holds the data file exactly as received (``data.csv`` / ``data.jsonl`` / ``data.parquet``; paginated
JSON APIs are stored as ``data.jsonl``, one record per line) and ``manifest.json`` describing it. Re-running the
crawl for a run that already has a snapshot returns it without touching the network.

Format selection (``config.crawl_format``):

* ``csv`` / ``jsonl`` / ``parquet``: one GET, body stored as received.
* ``json_api``: pages of JSON objects (see :mod:`.fetch`). ``page_size=<crawl_page_size>`` is added to the first URL
  (unless it is already there). Only the first page is conditional: its ETag stands for the whole dataset.
* ``auto``: from the response's Content-Type, else the URL suffix, else the parquet magic bytes. JSON
  (``application/json`` / ``.json``) means ``json_api``; then the first URL is requested as given (its own
  pagination, if any, is followed) and ``crawl_page_size`` only applies to cursor-built URLs.

Failures raise :class:`CrawlError` with the URL, the HTTP status or network error, and what to check; nothing is
written. Transient failures are retried (see :mod:`.http_client`).

Bounds (each refusal is a non-retryable :class:`CrawlError`): redirects and ``next`` links only to ``crawl_url``'s
origin or ``crawl_allowed_origins``; the whole crawl within ``crawl_deadline_seconds``; at most ``crawl_max_bytes``
received (decoded), ``crawl_max_rows`` rows and, for Parquet, ``crawl_max_uncompressed_bytes`` once decompressed
and decoded (checked from its metadata and dictionaries before anything is expanded).

Modules: :mod:`.result` (file names, result, error), :mod:`.guards` (allowed origins, deadline),
:mod:`.http_client` (retries, redirects, byte budget), :mod:`.formats` (format detection), :mod:`.fetch` (bodies
and API pages), :mod:`.limits` (Parquet size checks), :mod:`.readers` (reading snapshots, also for the ETL),
:mod:`.snapshot` (history, manifest, the stage).
"""

from mlpipeline.stages.crawl.formats import detect_format
from mlpipeline.stages.crawl.readers import iter_raw, read_raw, rechunk
from mlpipeline.stages.crawl.result import DATA_FILES, MANIFEST, RAW_FORMATS, CrawlError, CrawlResult
from mlpipeline.stages.crawl.snapshot import crawl

__all__ = [
    "DATA_FILES",
    "MANIFEST",
    "RAW_FORMATS",
    "CrawlError",
    "CrawlResult",
    "crawl",
    "detect_format",
    "iter_raw",
    "read_raw",
    "rechunk",
]
