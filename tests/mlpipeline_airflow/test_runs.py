"""The asset events' extras, from the records the stages really return: small, JSON, and the lineage they promise
(the DAG-run test checks them on a real run's asset events)."""

from __future__ import annotations

import json
import math

from mlpipeline.stages.crawl.result import CrawlResult
from mlpipeline.stages.deploy import DeployResult
from mlpipeline.stages.etl.result import EtlResult
from mlpipeline.stages.train import TrainResult
from mlpipeline.stages.validate import ValidationDecision
from mlpipeline_airflow.runs import champion_extra, processed_data_extra, raw_snapshot_extra

SHA = "ab" * 32


def _record(score: float = 0.875) -> dict:
    crawl = CrawlResult(
        snapshot_dir="/data/raw/r1", data_path="/data/raw/r1/data.csv", manifest_path="/data/raw/r1/manifest.json",
        format="csv", rows=3000, bytes=123456, sha256=SHA, unchanged=False, source_url="http://u:p@src/x.csv", pages=1,
    )  # fmt: skip
    etl = EtlResult(
        processed_dir="/data/processed/r1", data_path="/data/processed/r1/data.parquet", quarantine_path="q",
        profile_path="p", rows_in=3000, rows_out=2950, rows_quarantined=40, duplicates_dropped=10,
        bad_row_fraction=0.013, data_sha256="cd" * 32, seconds=1.0, schema={"columns": ["x" * 50] * 200},
    )  # fmt: skip
    train = TrainResult(
        candidate="forest", mlflow_run_id="0" * 32, model_uri="models:/m-1", model_type="random_forest",
        metrics={"accuracy": score}, holdout_path="h", metrics_path="m", processed_data_path=etl.data_path,
        data_sha256=SHA, n_train=2360, n_test=590, seconds=2.0,
    )  # fmt: skip
    decision = ValidationDecision(
        deploy=True, metric="accuracy", candidate_score=score, threshold=0.0, champion_version=None,
        champion_score=None, candidate="forest", ranking=[{"candidate": "forest", "accuracy": score}] * 50,
    )  # fmt: skip
    deployed = DeployResult(
        model_name="churn_classifier", version="3", previous_version="2", alias="champion", serving_url="s",
        smoke_test_rows=50, max_probability_difference=0.0, deployed_at="t", record_path="r", reference_data_path=None,
    )  # fmt: skip
    return {
        "run": "r1",
        "crawl": crawl.to_dict(),
        "etl": etl.to_dict(),
        "train": train.to_dict(),
        "validate": decision.to_dict(),
        "deploy": deployed.to_dict(),
    }


def test_extras_carry_the_lineage_and_stay_small() -> None:
    record = _record()
    raw, processed, champion = raw_snapshot_extra(record), processed_data_extra(record), champion_extra(record)
    assert (raw["run"], raw["sha256"], raw["rows"], raw["path"]) == ("r1", SHA, 3000, "/data/raw/r1/data.csv")
    assert "u:p" not in json.dumps(raw)  # the source URL (and any credentials in it) stays out
    assert (processed["sha256"], processed["rows"], processed["rows_quarantined"]) == (SHA, 2950, 40)
    assert processed["processed_sha256"] == "cd" * 32
    assert {k: champion[k] for k in ("model_name", "version", "metric", "score", "run", "sha256")} == {
        "model_name": "churn_classifier",
        "version": "3",
        "metric": "accuracy",
        "score": 0.875,
        "run": "r1",
        "sha256": SHA,
    }
    # The schema and the ranking are in the records, not in the events.
    assert all(len(json.dumps(extra)) < 600 for extra in (raw, processed, champion))


def test_an_undefined_score_is_null_not_nan() -> None:
    extra = champion_extra(_record(score=math.nan))
    assert extra["score"] is None
    json.dumps(extra, allow_nan=False)
