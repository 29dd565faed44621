"""Retention: old pipeline runs' files and old registry versions are deleted by policy, debris of killed writers
with them; the champion's and its predecessor's data and models, and anything of a run that may still be active,
never are.

A pipeline run's files are ``raw/<run>/``, ``processed/<run>/`` (plus a rejected quarantine beside it),
``models/<run>/`` and ``runs/<run>/``. Runs are ordered by when they started (the oldest write of their top-level
entries); the newest ``retention_runs`` stay. A registry version's MLflow run stays when the version is deleted:
it is the experiment's history (parameters, metrics, lineage), and the artifacts it holds are freed only by
deleting it and running ``mlflow gc``, an operator's decision.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlpipeline.config import PipelineConfig
from mlpipeline.registry import all_versions, protected_versions, use_tracking
from mlpipeline.storage import DataLayout, disk_usage, read_json, remove_stale_temps, temp_sibling

log = logging.getLogger(__name__)

AREAS = ("raw", "processed", "models", "runs")
# Files that belong to a run without being its directory: ETL's ``<run>.rejected-quarantine.parquet``.
_RUN_FILE = re.compile(r"^(?P<run>[A-Za-z0-9][A-Za-z0-9._-]*?)\.rejected-")


@dataclass(frozen=True)
class RetentionResult:
    """What one application of the policy deleted and kept, and why."""

    deleted_runs: list[str]
    deleted_paths: list[str]
    deleted_versions: list[str]
    removed_temp_paths: list[str]
    bytes_freed: int
    kept_runs: list[str]
    protected_runs: dict[str, str]
    protected_versions: dict[str, str]
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    deleted_paths: list[str] = field(default_factory=list)
    removed_temp_paths: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def run_inventory(layout: DataLayout) -> dict[str, list[Path]]:
    """Every run key found under the data areas, with its entries. Temp entries (``.*``) and files that name no
    run are nobody's: left to the stale-temp cleanup, or alone."""
    runs: dict[str, list[Path]] = {}
    for area in AREAS:
        try:
            entries = sorted((layout.root / area).iterdir())
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and not entry.is_symlink():
                runs.setdefault(entry.name, []).append(entry)
            elif match := _RUN_FILE.match(entry.name):
                runs.setdefault(match["run"], []).append(entry)
    return runs


def _started_at(entries: list[Path]) -> float:
    return min(entry.lstat().st_mtime for entry in entries)


def _last_written(entries: list[Path]) -> float:
    """The newest modification time of anything of the run (its directories are small: a few files each)."""
    newest = 0.0
    for entry in entries:
        newest = max(newest, entry.lstat().st_mtime)
        for folder, dirs, files in os.walk(entry):
            for name in [*dirs, *files]:
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def newest_runs(layout: DataLayout, count: int) -> list[str]:
    """The ``count`` most recently started runs on disk, newest first."""
    inventory = run_inventory(layout)
    return sorted(inventory, key=lambda run: _started_at(inventory[run]), reverse=True)[: max(count, 0)]


def _run_of_path(layout: DataLayout, path: str | None) -> str | None:
    """The run key of a path under one of the data areas (e.g. a ``processed_data_path`` tag), else None."""
    if not path:
        return None
    try:
        parts = Path(path).resolve().relative_to(layout.root).parts
    except ValueError:
        return None
    return parts[1] if len(parts) >= 2 and parts[0] in AREAS else None


def _runs_of_versions(
    client: MlflowClient, config: PipelineConfig, layout: DataLayout, versions: dict[str, str]
) -> dict[str, str]:
    """The pipeline runs whose data and models the given versions need: the run that trained each (the
    ``pipeline_run`` tag) and the run whose processed data it was trained on."""
    runs: dict[str, str] = {}
    for number, reason in versions.items():
        version = client.get_model_version(config.registered_model_name, number)
        tags = _run_tags(client, version.run_id)
        why = f"version {number} ({reason})"
        if run := version.tags.get("pipeline_run") or tags.get("pipeline_run"):
            runs.setdefault(run, why)
        if data_run := _run_of_path(layout, tags.get("processed_data_path")):
            runs.setdefault(data_run, why)
    return runs


def _run_tags(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    try:
        return dict(client.get_run(run_id).data.tags) if run_id else {}
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return {}  # the version outlived its run: its own tags are all there is
        raise


def _crawl_history_runs(layout: DataLayout) -> dict[str, str]:
    """Snapshots the crawler's history points at: its next conditional request reuses their data file."""
    runs = {}
    for state_file in sorted((layout.state / "crawl").glob("*.json")):
        try:
            run = _run_of_path(layout, read_json(state_file).get("snapshot_dir"))
        except (OSError, ValueError, AttributeError):
            continue
        if run:
            runs[run] = "the crawler's last snapshot of its source"
    return runs


def _delete(path: Path, tally: _Tally, dry_run: bool) -> None:
    """Rename out of the way first (atomic), then delete: a kill mid-delete leaves a temp entry of a dead writer,
    which the next cleanup removes, never a half-deleted run that looks complete."""
    size = disk_usage(path, unshared_only=True)
    tally.deleted_paths.append(str(path))
    tally.bytes_freed += size
    if dry_run:
        return
    doomed = temp_sibling(path)
    os.rename(path, doomed)
    if doomed.is_dir():
        shutil.rmtree(doomed)
    else:
        doomed.unlink()


def _remove_debris(layout: DataLayout, inventory: dict[str, list[Path]], tally: _Tally, dry_run: bool) -> None:
    """Temp entries of dead writers in the areas and in the runs' directories (train writes per candidate)."""
    if dry_run:
        return
    folders = [layout.root / area for area in AREAS]
    folders += [entry for entries in inventory.values() for entry in entries if entry.is_dir()]
    for folder in folders:
        for path, size in remove_stale_temps(folder):
            tally.removed_temp_paths.append(str(path))
            tally.bytes_freed += size


def _retire_versions(
    client: MlflowClient, config: PipelineConfig, protected: dict[str, str], active_runs: Collection[str], dry_run: bool
) -> list[str]:
    """Delete the versions older than the newest ``retention_registry_versions`` that nothing protects."""
    deleted = []
    for version in all_versions(client, config.registered_model_name)[config.retention_registry_versions :]:
        number = str(version.version)
        # ``protected`` holds every aliased version (search results do not carry their aliases).
        if number in protected or version.tags.get("pipeline_run") in active_runs:
            continue
        if not dry_run:
            client.delete_model_version(config.registered_model_name, number)
        deleted.append(number)
    return deleted


def apply_retention(
    config: PipelineConfig,
    *,
    active_runs: Collection[str] = (),
    now: float | None = None,
    dry_run: bool = False,
    client: MlflowClient | None = None,
) -> RetentionResult:
    """Apply the retention settings once. ``active_runs``: run keys the caller knows may still be running;
    besides those, any run with a file written within ``retention_grace_hours`` counts as active. Raises (and
    deletes nothing) when the registry cannot say which versions to protect."""
    layout = DataLayout.of(config.data_dir)
    client = client or use_tracking(config)
    versions = protected_versions(client, config.registered_model_name, config.champion_alias)
    protected = {
        **{run: "active (named by the caller)" for run in active_runs},
        **_runs_of_versions(client, config, layout, versions),
        **_crawl_history_runs(layout),
    }
    inventory = run_inventory(layout)
    recent = (now if now is not None else time.time()) - config.retention_grace_hours * 3600
    active = set(active_runs) | {run for run, entries in inventory.items() if _last_written(entries) > recent}
    for run in sorted(active - set(protected)):
        protected[run] = f"written within the last {config.retention_grace_hours:g} h: may be active"

    by_start = sorted(inventory, key=lambda run: _started_at(inventory[run]), reverse=True)
    tally, deleted_runs = _Tally(), []
    for run in by_start[config.retention_runs :]:
        if run in protected:
            continue
        for path in inventory.pop(run):
            _delete(path, tally, dry_run)
        deleted_runs.append(run)
    _remove_debris(layout, inventory, tally, dry_run)
    deleted_versions = _retire_versions(client, config, versions, active, dry_run)
    result = RetentionResult(
        deleted_runs=deleted_runs,
        deleted_paths=tally.deleted_paths,
        deleted_versions=deleted_versions,
        removed_temp_paths=tally.removed_temp_paths,
        bytes_freed=tally.bytes_freed,
        kept_runs=[run for run in by_start if run not in deleted_runs],
        protected_runs={run: why for run, why in protected.items() if run in inventory},
        protected_versions=versions,
        dry_run=dry_run,
    )
    log.info(
        "retention: deleted %d run(s), %d version(s), %d temp entr(ies); %d bytes freed",
        len(deleted_runs),
        len(deleted_versions),
        len(tally.removed_temp_paths),
        tally.bytes_freed,
    )
    return result
