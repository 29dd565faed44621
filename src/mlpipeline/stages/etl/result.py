"""What the ETL produces and how it fails: the output's file names, :class:`EtlResult`, :class:`EtlError`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.csv"
PROFILE_FILE = "profile.json"
RECORD_FILE = "etl.json"
TARGET_LABEL_COLUMN = "_target_label"
STAGING_FILE = ".staging.parquet"  # pass 1's clean rows; deleted once the output is written


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
