"""What a run left on disk, read once for the report: every record optional, and why one is absent.

The layout is :class:`mlpipeline.storage.DataLayout`'s: ``runs/<run>/`` (config.json, config.resolved.json,
data_check.json, validate.json, deploy.json, monitor.json), ``processed/<run>/`` (etl.json, profile.json,
quarantine.csv) and ``models/<run>/<candidate>/`` (train.json, metrics.json, holdout.parquet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mlpipeline.config import PipelineConfig, read_config
from mlpipeline.stages.etl.result import PROFILE_FILE, QUARANTINE_FILE, EtlResult, resolved_config
from mlpipeline.stages.etl.result import RECORD_FILE as ETL_FILE
from mlpipeline.stages.monitor.report import REPORT_FILE as MONITOR_FILE
from mlpipeline.stages.train import HOLDOUT_FILE, METRICS_FILE
from mlpipeline.stages.train import RECORD_FILE as TRAIN_FILE
from mlpipeline.storage import DataLayout, read_json, run_key

log = logging.getLogger(__name__)

RESOLVED_CONFIG_FILE = "config.resolved.json"
CONFIG_FILE = "config.json"
DATA_CHECK_FILE = "data_check.json"
VALIDATE_FILE = "validate.json"
DEPLOY_FILE = "deploy.json"


@dataclass(frozen=True)
class CandidateRecord:
    """One trained candidate: its train.json, its metrics.json (confusion matrix included) and held-out rows."""

    name: str
    train: dict[str, Any]
    metrics: dict[str, Any]
    holdout_path: Path

    @property
    def task(self) -> str:
        return str(self.train.get("task") or "")


@dataclass(frozen=True)
class RunRecords:
    """Every record of one run; a record that could not be read is None and ``why_absent`` says why."""

    run: str
    layout: DataLayout
    config: PipelineConfig
    data_check: dict[str, Any] | None = None
    validate: dict[str, Any] | None = None
    deploy: dict[str, Any] | None = None
    monitor: dict[str, Any] | None = None
    etl: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    quarantine_path: Path | None = None
    candidates: list[CandidateRecord] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file name -> why it could not be read

    @property
    def task(self) -> str:
        if self.config.task != "auto":
            return self.config.task
        for record in (self.validate, self.etl, *(c.train for c in self.candidates)):
            if record and record.get("task"):
                return str(record["task"])
        return "auto"

    @property
    def stopped_early(self) -> bool:
        """The data check found nothing new: nothing was cleaned, trained or judged."""
        return bool(self.data_check and self.data_check.get("unchanged"))

    @property
    def chosen(self) -> CandidateRecord | None:
        """The candidate validation judged (the best of the ranking); else the first one found."""
        wanted = (self.validate or {}).get("candidate")
        by_name = {c.name: c for c in self.candidates}
        return by_name.get(wanted) or (self.candidates[0] if self.candidates else None)

    def why_absent(self, what: str) -> str:
        """Why ``what`` (a record's file name, or "models") is not there, in words a reader can act on."""
        if what in self.unreadable:
            return self.unreadable[what]
        if self.stopped_early:
            reason = (self.data_check or {}).get("reason", "the data and training are unchanged")
            return f"the run stopped after check_data ({reason})"
        rejected = self.validate is not None and not self.validate.get("deploy")
        if what in (DEPLOY_FILE, MONITOR_FILE) and rejected:
            return "the candidate was rejected, so nothing was deployed or monitored"
        if what in (DEPLOY_FILE, MONITOR_FILE) and self.validate is None:
            return "no decision was recorded (validate.json is absent), so nothing was deployed or monitored"
        if what == "models":
            return f"no trained candidate under {self.layout.models(self.run)} (no train.json)"
        where = (
            self.layout.processed(self.run) if what in (ETL_FILE, PROFILE_FILE) else self.layout.run_records(self.run)
        )
        return f"{what} is absent from {where} (the stage did not run or did not finish)"


def _optional_json(path: Path, unreadable: dict[str, str]) -> dict[str, Any] | None:
    """The JSON object at ``path``; None when it is absent or unreadable (then why, in ``unreadable``)."""
    if not path.is_file():
        return None
    try:
        value = read_json(path)
    except (OSError, ValueError) as exc:
        unreadable[path.name] = f"cannot read {path}: {type(exc).__name__}: {exc}"
        log.warning("report: %s", unreadable[path.name])
        return None
    if not isinstance(value, dict):
        unreadable[path.name] = f"{path} does not hold a JSON object"
        return None
    return value


def _run_config(config: PipelineConfig, records_dir: Path, etl: dict[str, Any] | None) -> PipelineConfig:
    """The config as the run's later stages saw it: resolved by the ETL (task, columns, metric) when possible."""
    if config.task != "auto":
        return config
    frozen = records_dir / RESOLVED_CONFIG_FILE
    try:
        if frozen.is_file():
            return read_config(str(frozen))
        if etl is not None:
            known = {f.name for f in fields(EtlResult)}
            return resolved_config(config, EtlResult(**{k: v for k, v in etl.items() if k in known}))
    except Exception as exc:  # an unusable frozen config: the report still shows what the records say
        log.warning("report: cannot resolve the run's config (%s); using the one given", exc)
    return config


def _candidates(models_dir: Path, ranking: list[dict[str, Any]], unreadable: dict[str, str]) -> list[CandidateRecord]:
    """The trained candidates, in the ranking's order (best first), then any others by name."""
    found: list[CandidateRecord] = []
    directories = sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    for directory in directories:
        train = _optional_json(directory / TRAIN_FILE, unreadable)
        if train is None:
            continue
        metrics = _optional_json(directory / METRICS_FILE, unreadable) or dict(train.get("metrics") or {})
        holdout = Path(train.get("holdout_path") or directory / HOLDOUT_FILE)
        name = str(train.get("candidate") or directory.name)
        found.append(CandidateRecord(name, train, metrics, holdout))
    order = {str(entry.get("candidate")): rank for rank, entry in enumerate(ranking)}
    return sorted(found, key=lambda c: (order.get(c.name, len(order)), c.name))


def load_run_records(config: PipelineConfig, run: str) -> RunRecords:
    """Read every record of ``run`` under ``config.data_dir``; absent ones stay None."""
    key = run_key(run)
    layout = DataLayout.of(config.data_dir)
    records_dir, processed = layout.run_records(key), layout.processed(key)
    unreadable: dict[str, str] = {}
    validate = _optional_json(records_dir / VALIDATE_FILE, unreadable)
    etl = _optional_json(processed / ETL_FILE, unreadable)
    quarantine = processed / QUARANTINE_FILE
    return RunRecords(
        run=key,
        layout=layout,
        config=_run_config(config, records_dir, etl),
        data_check=_optional_json(records_dir / DATA_CHECK_FILE, unreadable),
        validate=validate,
        deploy=_optional_json(records_dir / DEPLOY_FILE, unreadable),
        monitor=_optional_json(records_dir / MONITOR_FILE, unreadable),
        etl=etl,
        profile=_optional_json(processed / PROFILE_FILE, unreadable),
        quarantine_path=quarantine if quarantine.is_file() else None,
        candidates=_candidates(layout.models(key), list((validate or {}).get("ranking") or []), unreadable),
        unreadable=unreadable,
    )
