"""Retention against a real (SQLite) MLflow registry: disk use stays flat over 30 simulated daily runs, the
champion and its predecessor survive, active runs are never touched; orphan MLflow runs of killed attempts end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.dev.localstack import free_port
from mlpipeline.registry import ORPHANED_TAG, end_orphan_runs
from mlpipeline.stages.retention import AREAS, RetentionResult, apply_retention, newest_runs
from mlpipeline.storage import DataLayout, atomic_write_json, disk_usage, temp_sibling

DAY = 86400.0
START = time.time() - 60 * DAY  # day 0 of a simulation, far enough back that no run is "recent" by accident
# What one simulated run writes, bytes per file.
RUN_FILES = {
    "raw/{run}/data.csv": 4000,
    "raw/{run}/manifest.json": 300,
    "processed/{run}/data.parquet": 3000,
    "models/{run}/00_hist_gradient_boosting/holdout.parquet": 1000,
    "models/{run}/00_hist_gradient_boosting/train.json": 200,
    "runs/{run}/config.json": 500,
}
RUN_BYTES = sum(RUN_FILES.values())


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow SQLite database, made once: creating one costs ~10-20 s here."""
    path = tmp_path_factory.mktemp("registry") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@dataclass
class Simulation:
    """A data directory and a registry that daily pipeline runs fill the way crawl, etl, train and deploy do."""

    config: PipelineConfig
    client: MlflowClient
    experiment_id: str

    @property
    def layout(self) -> DataLayout:
        return DataLayout.of(self.config.data_dir)

    def daily_run(self, day: int, *, deploy: bool = False, rejected_rows: bool = False) -> str:
        run = f"scheduled__day_{day:02d}"
        paths = [self.layout.root / template.format(run=run) for template in RUN_FILES]
        for path, size in zip(paths, RUN_FILES.values(), strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
        if rejected_rows:  # what ETL leaves beside processed/ when it refuses a run
            paths.append(self.layout.root / "processed" / f"{run}.rejected-quarantine.parquet")
            paths[-1].write_bytes(b"q" * 700)
        atomic_write_json(
            self.layout.state / "crawl" / "source.json", {"snapshot_dir": str(self.layout.raw(run))}
        )  # the crawler's history points at its newest snapshot
        self._register(run, deploy=deploy)
        set_mtime(self.layout.root, paths, START + day * DAY)
        return run

    def _register(self, run: str, *, deploy: bool) -> str:
        tags = {"pipeline_run": run, "processed_data_path": str(self.layout.processed(run) / "data.parquet")}
        mlflow_run = self.client.create_run(self.experiment_id, tags=tags)
        self.client.set_terminated(mlflow_run.info.run_id)
        name = self.config.registered_model_name
        if not self.client.search_registered_models(f"name = '{name}'"):
            self.client.create_registered_model(name)
        version = self.client.create_model_version(
            name, f"runs:/{mlflow_run.info.run_id}/model", mlflow_run.info.run_id, tags={"pipeline_run": run}
        ).version
        if deploy:  # as deploy does: move the alias, then stamp the version with its predecessor
            previous = self.champion()
            self.client.set_registered_model_alias(name, self.config.champion_alias, version)
            self.client.set_model_version_tag(name, version, "deployed_at", now_iso(run))
            self.client.set_model_version_tag(name, version, "previous_champion", previous or "")
        return str(version)

    def champion(self) -> str | None:
        aliases = self.client.get_registered_model(self.config.registered_model_name).aliases
        return str(aliases[self.config.champion_alias]) if self.config.champion_alias in aliases else None

    def versions(self) -> dict[str, str]:
        """Version -> its pipeline run."""
        found = self.client.search_model_versions(f"name = '{self.config.registered_model_name}'")
        return {str(v.version): v.tags["pipeline_run"] for v in found}

    def runs_on_disk(self, area: str) -> set[str]:
        return {p.name for p in (self.layout.root / area).iterdir() if p.is_dir() and not p.name.startswith(".")}

    def leave_debris(self, run: str) -> Path:
        """A temp directory of a writer killed mid-write (its PID is dead)."""
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        mine = temp_sibling(self.layout.processed(run))
        debris = mine.with_name(mine.name.replace(f"-{os.getpid()}.", f"-{dead.pid}."))
        debris.mkdir()
        (debris / "part.parquet").write_bytes(b"p" * 900)
        return debris

    def retain(self, day: int, **kwargs: object) -> RetentionResult:
        # The maintenance DAG runs a couple of hours after the day's pipeline run.
        return apply_retention(self.config, now=START + day * DAY + 2 * 3600, **kwargs)  # type: ignore[arg-type]


def set_mtime(root: Path, paths: list[Path], stamp: float) -> None:
    """Date a run's files and directories (deepest first: writing a file touches its directory), not the areas."""
    touched = {p for path in paths for p in [path, *path.parents] if root in p.parents and p.parent != root}
    for path in sorted(touched, key=lambda p: len(p.parts), reverse=True):
        os.utime(path, (stamp, stamp))


def now_iso(run: str) -> str:
    day = int(run.rsplit("_", 1)[1])
    return datetime.fromtimestamp(START + day * DAY, timezone.utc).isoformat(timespec="seconds")


@pytest.fixture
def sim(tmp_path: Path, empty_registry: Path) -> Simulation:
    shutil.copyfile(empty_registry, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = build_config(
        {
            "data_dir": str(tmp_path / "data"),
            "mlflow_tracking_uri": uri,
            "retention_runs": 5,
            "retention_registry_versions": 4,
            "retention_grace_hours": 1,
        }
    )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return Simulation(config, client, client.create_experiment("retention", str(tmp_path / "artifacts")))


def test_disk_use_stays_flat_over_30_daily_runs_and_the_champion_and_predecessor_survive(sim: Simulation) -> None:
    totals, champion_runs = [], {}
    for day in range(30):
        deploy = day % 4 == 0 and day <= 20  # the last deploy is on day 20: by day 29 the champion is old
        run = sim.daily_run(day, deploy=deploy, rejected_rows=day % 5 == 3 and not deploy)
        if deploy:
            champion_runs[sim.champion()] = run
        debris = sim.leave_debris(run) if day % 3 == 1 else None

        result = sim.retain(day)

        assert debris is None or str(debris) in result.removed_temp_paths
        champion = sim.champion()
        predecessor = sim.client.get_model_version(sim.config.registered_model_name, champion).tags["previous_champion"]
        for version in filter(None, [champion, predecessor]):
            assert version in sim.versions()
            for area in AREAS:
                assert champion_runs[version] in sim.runs_on_disk(area), (day, version, area)
        for area in AREAS:
            assert len(sim.runs_on_disk(area)) <= 5 + 2
            assert not [p for p in (sim.layout.root / area).iterdir() if p.name.startswith(".")]  # no debris
        assert len(sim.versions()) <= 4 + 2
        totals.append(disk_usage(sim.layout.root))

    # Flat: once the policy bites, never more than N runs plus the champion's and its predecessor's (plus the
    # crawler's small history file), and the last days weigh what the first full ones did.
    assert max(totals) <= 7 * RUN_BYTES + 700 + 200
    assert max(totals[10:]) - min(totals[10:]) <= 2 * RUN_BYTES + 700
    assert sim.runs_on_disk("raw") == {f"scheduled__day_{d:02d}" for d in (16, 20, 25, 26, 27, 28, 29)}
    assert sorted(sim.versions().values()) == [f"scheduled__day_{d:02d}" for d in (16, 20, 26, 27, 28, 29)]
    # Old runs' quarantines went with them (days 3, 13, 18, 23); the kept day 28's stays.
    assert [p.name for p in (sim.layout.root / "processed").glob("*.rejected-*")] == [
        "scheduled__day_28.rejected-quarantine.parquet"
    ]


def test_deleted_versions_keep_their_mlflow_runs(sim: Simulation) -> None:
    runs = [sim.daily_run(day) for day in range(6)]
    run_ids = {v.tags["pipeline_run"]: v.run_id for v in sim.client.search_model_versions("name = 'churn_classifier'")}
    result = sim.retain(5)
    assert result.deleted_versions == ["2", "1"]
    for run in runs[:2]:
        assert sim.client.get_run(run_ids[run]).info.lifecycle_stage == "active"


def test_the_previous_champion_survives_when_deploy_died_before_recording_it(sim: Simulation) -> None:
    first = sim.daily_run(0, deploy=True)
    sim.daily_run(1, deploy=True)
    name = sim.config.registered_model_name
    sim.client.delete_model_version_tag(name, sim.champion(), "previous_champion")
    for day in range(2, 12):
        sim.daily_run(day)
    result = sim.retain(11)
    assert result.protected_versions == {"2": "alias 'champion'", "1": "the previous champion"}
    assert "1" in sim.versions() and first in sim.runs_on_disk("processed")


def test_runs_that_may_still_be_active_are_never_deleted(sim: Simulation) -> None:
    for day in range(8):
        sim.daily_run(day)
    # Day 1's run is still going (named by the caller); day 2's wrote a file an hour ago (within the grace).
    os.utime(sim.layout.models("scheduled__day_02"), (START + 7 * DAY + 5400,) * 2)
    result = sim.retain(7, active_runs={"scheduled__day_01"})
    assert result.deleted_runs == ["scheduled__day_00"]
    assert "active" in result.protected_runs["scheduled__day_01"]
    assert "may be active" in result.protected_runs["scheduled__day_02"]
    # Their versions stay too, though older than the newest 4.
    assert sorted(sim.versions(), key=int) == ["2", "3", "5", "6", "7", "8"]


def test_the_crawlers_last_snapshot_is_kept(sim: Simulation) -> None:
    for day in range(8):
        sim.daily_run(day)
    atomic_write_json(
        sim.layout.state / "crawl" / "source.json", {"snapshot_dir": str(sim.layout.raw("scheduled__day_00"))}
    )
    result = sim.retain(7)
    assert "scheduled__day_00" not in result.deleted_runs and "scheduled__day_00" in sim.runs_on_disk("raw")


def test_a_dry_run_deletes_nothing_and_says_what_it_would(sim: Simulation) -> None:
    for day in range(8):
        sim.daily_run(day)
    before = disk_usage(sim.layout.root), sim.versions()
    result = sim.retain(7, dry_run=True)
    assert result.deleted_runs == ["scheduled__day_02", "scheduled__day_01", "scheduled__day_00"]
    assert result.bytes_freed == 3 * RUN_BYTES and result.deleted_versions == ["4", "3", "2", "1"]
    assert (disk_usage(sim.layout.root), sim.versions()) == before
    assert newest_runs(sim.layout, 2) == ["scheduled__day_07", "scheduled__day_06"]


def test_nothing_is_deleted_when_the_registry_cannot_say_what_the_champion_is(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    for day in range(8):
        sim.daily_run(day, deploy=day == 0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = sim.config.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    before = disk_usage(sim.layout.root)
    with pytest.raises(MlflowException):
        apply_retention(down, now=START + 7 * DAY + 7200)
    assert disk_usage(sim.layout.root) == before and len(sim.runs_on_disk("raw")) == 8


# --- Orphan MLflow runs of killed attempts ---------------------------------------------------------------------

_KILLED_TRAINING = textwrap.dedent(
    """
    import sys, time
    import mlflow

    mlflow.set_tracking_uri(sys.argv[1])
    with mlflow.start_run(experiment_id=sys.argv[2], tags={"pipeline_run": "run_1", "candidate": "a"}) as run:
        print(run.info.run_id, flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def killed_training(sim: Simulation) -> Iterator[str]:
    """The MLflow run of a training attempt SIGKILLed mid-way (no ``end_run``): it stays RUNNING."""
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TRAINING, sim.config.mlflow_tracking_uri, sim.experiment_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        run_id = process.stdout.readline().strip()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert sim.client.get_run(run_id).info.status == "RUNNING"
    yield run_id


def test_the_next_attempt_ends_its_killed_predecessors_run(sim: Simulation, killed_training: str) -> None:
    client, experiment = sim.client, sim.experiment_id
    sibling = client.create_run(experiment, tags={"pipeline_run": "run_1", "candidate": "b"}).info.run_id  # live
    finished = client.create_run(experiment, tags={"pipeline_run": "run_1", "candidate": "a"}).info.run_id
    client.set_terminated(finished)

    assert end_orphan_runs(client, experiment, {"pipeline_run": "run_1", "candidate": "a"}) == [killed_training]

    orphan = client.get_run(killed_training)
    assert (orphan.info.status, orphan.data.tags[ORPHANED_TAG]) == ("FAILED", "true")
    assert orphan.info.end_time is not None
    assert client.get_run(sibling).info.status == "RUNNING" and ORPHANED_TAG not in client.get_run(sibling).data.tags
    assert client.get_run(finished).info.status == "FINISHED"
    assert end_orphan_runs(client, experiment, {"pipeline_run": "run_1", "candidate": "a"}) == []


def test_orphan_matching_needs_tags_and_takes_any_value(sim: Simulation) -> None:
    with pytest.raises(ValueError, match="match_tags"):
        end_orphan_runs(sim.client, sim.experiment_id, {})
    odd = sim.client.create_run(sim.experiment_id, tags={"mlflow.runName": "train-o'brien", "x": 'say "hi"'})
    ended = end_orphan_runs(sim.client, sim.experiment_id, {"mlflow.runName": "train-o'brien", "x": 'say "hi"'})
    assert ended == [odd.info.run_id]
