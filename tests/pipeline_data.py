"""Shared test data: the bundled churn dataset pushed through the real crawl-free ETL, ready for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.dev.datasource import generate_churn_dataset, to_csv_bytes
from mlpipeline.stages.etl import EtlResult, etl


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri: str

    def config(self, *, resolved: bool = True, **overrides: Any) -> PipelineConfig:
        """The churn test config; ``resolved`` (default) as the ETL leaves it for the later stages (task binary,
        the task's default metric), else as ``start`` freezes it."""
        config = build_config(
            {
                "data_dir": str(self.root / "data"),
                "mlflow_tracking_uri": self.tracking_uri,
                "mlflow_artifact_location": str(self.root / "artifacts"),
                "hyperparameters": {"max_iter": 60},
                **overrides,
            }
        )
        return config.resolved("binary", config.dataset_schema) if resolved else config

    def processed(self, run: str, rows: int = 2000, seed: int = 7, **dataset: Any) -> EtlResult:
        raw = self.root / f"{run}.csv"
        raw.write_bytes(to_csv_bytes(generate_churn_dataset(rows, seed, **dataset)))
        return etl(self.config(), run=run, raw_data_path=str(raw), raw_format="csv")


def workspace(root: Path) -> Workspace:
    return Workspace(root=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
