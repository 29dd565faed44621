"""Helpers shared by the crawl tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.dev.datasource import DataSourceServer

ROWS = 1500


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
