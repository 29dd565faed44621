"""What a crawl produces and how it fails: the snapshot's file names, :class:`CrawlResult`, :class:`CrawlError`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

RAW_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
DATA_FILES: dict[str, str] = {fmt: f"data.{fmt}" for fmt in RAW_FORMATS}
MANIFEST = "manifest.json"


class CrawlError(RuntimeError):
    """The source could not be crawled; the message names the URL, what went wrong and what to check.

    ``retryable`` tells an orchestrator whether running the task again later may help: True when the source was
    down, slow or overloaded (retries exhausted) or changed mid-crawl; False when it answered with something
    unusable (4xx, malformed or oversized data), which a retry would only repeat.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class CrawlResult:
    """What the crawl produced; small and JSON-able (it travels through Airflow XCom)."""

    snapshot_dir: str
    data_path: str
    manifest_path: str
    format: str  # csv | jsonl | parquet: the stored file's format (json_api pages are stored as jsonl)
    rows: int
    bytes: int
    sha256: str
    unchanged: bool
    source_url: str
    pages: int
    reused_from: str | None = None  # snapshot whose data file was reused when unchanged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> CrawlResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})

    @classmethod
    def of_snapshot(cls, snapshot: Path, manifest: dict[str, Any]) -> CrawlResult:
        """The result describing ``snapshot`` from its manifest."""
        return cls(
            snapshot_dir=str(snapshot),
            data_path=str(snapshot / manifest["data_file"]),
            manifest_path=str(snapshot / MANIFEST),
            format=manifest["format"],
            rows=int(manifest["rows"]),
            bytes=int(manifest["bytes"]),
            sha256=manifest["sha256"],
            unchanged=bool(manifest["unchanged"]),
            source_url=manifest["source_url"],
            pages=int(manifest["pages"]),
            reused_from=manifest.get("reused_from"),
        )
