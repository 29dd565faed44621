"""What the ETL produces and how it fails: the output's file names, :class:`EtlResult`, :class:`EtlError`, and
the config the stages after the ETL run on (:func:`resolved_config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlpipeline.config import DatasetSchema, PipelineConfig

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.csv"
PROFILE_FILE = "profile.json"
RECORD_FILE = "etl.json"
TARGET_LABEL_COLUMN = "_target_label"
STAGING_FILE = ".staging.arrow"  # pass 1's clean rows; deleted once the output is written


class EtlError(RuntimeError):
    """The data cannot be turned into a training set; the message says why and where to look."""


@dataclass(frozen=True)
class EtlResult:
    processed_dir: str
    data_path: str
    quarantine_path: str
    profile_path: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    duplicates_dropped: int
    bad_row_fraction: float
    data_sha256: str
    seconds: float
    # What the data decided (the defaults are what a record written before these fields meant: binary 0/1 data).
    task: str = "binary"
    classes: list[Any] = field(default_factory=lambda: [0, 1])  # as in the processed target, sorted; [] regression
    positive_label: str | None = None  # binary: the target value (as text) that became 1
    schema: dict[str, Any] = field(default_factory=dict)  # the resolved DatasetSchema, as JSON
    excluded: dict[str, str] = field(default_factory=dict)  # source column -> why it is not used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolved_config(config: PipelineConfig, result: EtlResult) -> PipelineConfig:
    """``config`` as the data resolved it: the task, the feature columns, the task's default metric and, for a
    binary task, the positive label. Raises :class:`~mlpipeline.config.ConfigError` if a setting does not fit the
    task (e.g. ridge for a classification)."""
    schema = dict(result.schema) if result.schema else config.dataset_schema.model_dump(mode="json")
    if result.task == "binary" and result.positive_label is not None:
        schema["positive_label"] = result.positive_label
    return config.resolved(result.task, DatasetSchema(**schema))
