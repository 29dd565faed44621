"""The crawl stage itself: an immutable raw snapshot ``<data_dir>/raw/<run>/`` with its ``manifest.json``.

Snapshots are built under a temp name and renamed into place, so a snapshot directory is either complete or
absent. Per source URL the crawler remembers (in ``<data_dir>/state/crawl/<url hash>.json``) the ETag,
Last-Modified, sha256 and snapshot of the last successful crawl, and sends conditional requests; on ``304 Not
Modified``, or when the new body hashes the same as the previous one, the snapshot reuses the previous data file
(hard link, or copy) and is marked ``unchanged``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mlpipeline import __version__
from mlpipeline.config import PipelineConfig
from mlpipeline.stages.crawl.fetch import Fetched, Fetcher
from mlpipeline.stages.crawl.http_client import with_query
from mlpipeline.stages.crawl.limits import parquet_rows
from mlpipeline.stages.crawl.readers import count_rows, quick_schema
from mlpipeline.stages.crawl.result import DATA_FILES, MANIFEST, CrawlError, CrawlResult
from mlpipeline.storage import DataLayout, atomic_directory, atomic_write_json, read_json, run_key

log = logging.getLogger(__name__)

_STALE_TEMP_SECONDS = 3600.0  # a crawl's temp dir untouched this long belongs to a dead worker


# ------------------------------------------------------------------------------------------------------------
# History: the last successful crawl of a URL, for conditional requests
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Previous:
    """The last successful crawl of this URL, verified to still be on disk."""

    snapshot_dir: Path
    manifest: dict[str, Any]
    crawl_format: str

    @property
    def data_path(self) -> Path:
        return self.snapshot_dir / self.manifest["data_file"]

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.manifest.get("etag"):
            headers["If-None-Match"] = self.manifest["etag"]
        if self.manifest.get("last_modified"):
            headers["If-Modified-Since"] = self.manifest["last_modified"]
        return headers


def _state_path(layout: DataLayout, url: str) -> Path:
    return layout.state / "crawl" / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"


def _load_previous(layout: DataLayout, config: PipelineConfig) -> _Previous | None:
    path = _state_path(layout, config.crawl_url)
    try:
        state = read_json(path)
        previous = _Previous(
            Path(state["snapshot_dir"]), read_json(Path(state["snapshot_dir"]) / MANIFEST), state["crawl_format"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no (usable) history: crawl unconditionally
    if previous.crawl_format != config.crawl_format or previous.manifest.get("source_url") != config.crawl_url:
        return None  # the history was made with other settings; its validators do not apply
    try:
        if previous.data_path.stat().st_size != previous.manifest["bytes"]:
            raise OSError("size differs from the manifest")
    except (OSError, KeyError) as exc:
        log.warning(
            "ignoring crawl history for %s: previous snapshot %s is unusable (%s)",
            config.crawl_url,
            previous.snapshot_dir,
            exc,
        )
        return None
    return previous


def _save_state(layout: DataLayout, config: PipelineConfig, snapshot: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(
        _state_path(layout, config.crawl_url),
        {
            "source_url": config.crawl_url,
            "crawl_format": config.crawl_format,
            "snapshot_dir": str(snapshot),
            "etag": manifest["etag"],
            "last_modified": manifest["last_modified"],
            "sha256": manifest["sha256"],
            "updated_at": manifest["fetched_at"],
        },
    )


def _link_or_copy(source: Path, target: Path) -> None:
    # Snapshots are immutable, so sharing the inode is safe and costs no space.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ------------------------------------------------------------------------------------------------------------
# Building one snapshot
# ------------------------------------------------------------------------------------------------------------


class _SnapshotBuilder:
    """Fills the temp directory of a snapshot and returns its manifest."""

    def __init__(self, config: PipelineConfig, previous: _Previous | None, directory: Path) -> None:
        self.config = config
        self.previous = previous
        self.directory = directory
        self.fetcher = Fetcher(config, directory)

    def close(self) -> None:
        self.fetcher.close()

    def run(self) -> dict[str, Any]:
        url = self._request_url()
        fetched = self.fetcher.first(url, self.previous.conditional_headers() if self.previous else {})
        if fetched.not_modified:
            return self._reuse(fetched, url)
        if fetched.source_format == "json_api":
            self.fetcher.paginate(url, fetched)
            stored = "jsonl"
        else:
            fetched.pages = 1
            stored = str(fetched.source_format)
        data_path = self.directory / DATA_FILES[stored]
        rows = self._validate(data_path, stored, url)
        manifest = self._manifest(fetched, url, stored, rows, quick_schema(data_path, stored))
        previous = self.previous
        if previous and previous.manifest["sha256"] == fetched.sha256 and previous.manifest["format"] == stored:
            # Same bytes as last time: share the previous file instead of keeping a second copy.
            data_path.unlink()
            _link_or_copy(previous.data_path, data_path)
            manifest.update(unchanged=True, reused_from=str(previous.snapshot_dir))
        return manifest

    def _request_url(self) -> str:
        """``crawl_url``, with ``page_size`` added for an explicit ``json_api`` (unless the URL has one)."""
        url = self.config.crawl_url
        if self.config.crawl_format == "json_api" and "page_size" not in dict(parse_qsl(urlsplit(url).query)):
            url = with_query(url, page_size=str(self.config.crawl_page_size))
        return url

    def _validate(self, path: Path, fmt: str, url: str) -> int:
        try:
            rows = parquet_rows(path, self.config, url) if fmt == "parquet" else count_rows(path, fmt)
        except CrawlError:
            raise
        except Exception as exc:  # any parser error means the body is not usable data
            problem = f"{type(exc).__name__}: {exc}".strip()[:500]
            raise CrawlError(
                f"{url}: the {fmt} body could not be parsed ({problem}); check that crawl_url serves {fmt}"
                " data (or set crawl_format)"
            ) from None
        if rows == 0:
            raise CrawlError(f"{url}: the source returned no data rows; check the source and crawl_url")
        if rows > self.config.crawl_max_rows:
            raise CrawlError(
                f"{url}: the source has {rows} rows, more than crawl_max_rows={self.config.crawl_max_rows};"
                " raise crawl_max_rows if this size is expected"
            )
        return rows

    def _reuse(self, fetched: Fetched, url: str) -> dict[str, Any]:
        previous = self.previous
        if previous is None:
            raise CrawlError(f"GET {url} answered 304 Not Modified, but this crawler sent no conditional request")
        old = previous.manifest
        _link_or_copy(previous.data_path, self.directory / old["data_file"])
        fetched.etag = fetched.etag or old.get("etag")
        fetched.last_modified = fetched.last_modified or old.get("last_modified")
        fetched.sha256, fetched.bytes, fetched.pages = old["sha256"], old["bytes"], old["pages"]
        fetched.source_format = old.get("source_format", old["format"])
        manifest = self._manifest(fetched, url, old["format"], old["rows"], old["schema"])
        manifest.update(unchanged=True, reused_from=str(previous.snapshot_dir))
        return manifest

    def _manifest(self, fetched: Fetched, url: str, fmt: str, rows: int, schema: dict[str, str]) -> dict[str, Any]:
        return {
            "source_url": self.config.crawl_url,
            "request_url": url,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": fmt,
            "source_format": fetched.source_format,
            "crawl_format": self.config.crawl_format,
            "data_file": DATA_FILES[fmt],
            "bytes": fetched.bytes,
            "rows": rows,
            "sha256": fetched.sha256,
            "schema": schema,
            "etag": fetched.etag,
            "last_modified": fetched.last_modified,
            "pages": fetched.pages,
            "requests": self.fetcher.http.requests,
            "http_status": fetched.status,
            "unchanged": False,
            "reused_from": None,
            "crawler_version": __version__,
        }


def _remove_stale_temp_dirs(snapshot: Path) -> None:
    """Delete this run's half-built snapshots left by a killed worker (exceptions clean up, SIGKILL does not)."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    # run_key() names contain no glob metacharacters.
    for candidate in snapshot.parent.glob(f".{snapshot.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if candidate.is_dir() and candidate.stat().st_mtime < cutoff:
                shutil.rmtree(candidate)
                log.warning("removed stale temp directory %s", candidate)


def _existing_snapshot(snapshot: Path) -> CrawlResult | None:
    """The run's complete snapshot, if there is one; refuses a directory that is not a snapshot."""
    if (snapshot / MANIFEST).is_file():
        log.info("raw snapshot %s already exists; reusing it", snapshot)
        return CrawlResult.of_snapshot(snapshot, read_json(snapshot / MANIFEST))
    if snapshot.exists():
        raise CrawlError(f"{snapshot} exists but has no {MANIFEST}: it is not a crawl snapshot; remove it and retry")
    return None


def _build_snapshot(config: PipelineConfig, previous: _Previous | None, snapshot: Path) -> dict[str, Any] | None:
    """Build ``snapshot`` and return its manifest; None when another worker finished the same run first."""
    try:
        with atomic_directory(snapshot) as directory:
            builder = _SnapshotBuilder(config, previous, directory)
            try:
                manifest = builder.run()
            finally:
                builder.close()
            atomic_write_json(directory / MANIFEST, manifest)
    except OSError:
        # Another worker finished the same run first (rename onto a non-empty directory): use its snapshot.
        if (snapshot / MANIFEST).is_file():
            return None
        raise
    return manifest


def crawl(config: PipelineConfig, run: str) -> CrawlResult:
    """Fetch ``config.crawl_url`` into the immutable snapshot ``<data_dir>/raw/<run>/`` and describe it.

    ``run`` is a directory key from :func:`mlpipeline.storage.run_key`. If the run already has a complete
    snapshot it is returned as is, without any request.
    """
    if run != run_key(run):
        raise ValueError(f"run {run!r} is not a directory key; pass storage.run_key(run_id)")
    layout = DataLayout.of(config.data_dir)
    snapshot = layout.raw(run)
    existing = _existing_snapshot(snapshot)
    if existing is not None:
        return existing
    _remove_stale_temp_dirs(snapshot)

    manifest = _build_snapshot(config, _load_previous(layout, config), snapshot)
    if manifest is None:
        return CrawlResult.of_snapshot(snapshot, read_json(snapshot / MANIFEST))
    with contextlib.suppress(OSError):  # history only enables conditional requests; never fail the crawl for it
        _save_state(layout, config, snapshot, manifest)
    result = CrawlResult.of_snapshot(snapshot, manifest)
    log.info(
        "crawled %s -> %s (%s, %d rows, %d bytes, %d page(s), unchanged=%s)",
        config.crawl_url,
        result.data_path,
        result.format,
        result.rows,
        result.bytes,
        result.pages,
        result.unchanged,
    )
    return result
