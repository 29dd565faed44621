"""The library stages end to end on public datasets nobody here wrote, one per task kind, crawled over HTTP from the
bundled data source (which serves the files that ship inside scikit-learn, palmerpenguins and vega_datasets),
configured only through documented settings (the target; the columns are inferred), deployed to a live model
server and monitored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from mlpipeline.config import PipelineConfig, build_config, read_config
from mlpipeline.dev.datasource import DataSourceServer
from mlpipeline.dev.public_datasets import DATASETS_PATH
from mlpipeline.payload import json_rows
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages.crawl import crawl
from mlpipeline.stages.deploy import deploy
from mlpipeline.stages.etl import etl, resolved_config
from mlpipeline.stages.monitor import monitor
from mlpipeline.stages.train import train
from mlpipeline.stages.validate import select_best, validate
from mlpipeline.storage import DataLayout, atomic_write_json

# name, target, the task auto must decide, the candidates (all model types that fit the task)
CASES = [
    ("breast_cancer", "diagnosis", "binary", ["hist_gradient_boosting", "logistic_regression"]),
    ("wine", "cultivar", "multiclass", ["random_forest", "logistic_regression"]),
    ("diabetes", "progression", "regression", ["hist_gradient_boosting", "ridge"]),
    ("penguins", "Species", "multiclass", ["hist_gradient_boosting"]),
    ("seattle_weather", "weather", "multiclass", ["hist_gradient_boosting"]),
]


@pytest.fixture(scope="module")
def source() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=200) as server:
        yield server


def _config(tmp_path: Path, url: str, name: str, target: str, model_types: list[str]) -> PipelineConfig:
    """Only documented settings: where the data is, its target, the candidates; everything else by default."""
    return build_config(
        {
            "crawl_url": url,
            "data_dir": str(tmp_path / "data"),
            "dataset_schema": {"target": target},
            "candidates": [{"ml_model_type": model_type} for model_type in model_types],
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "mlflow_artifact_location": str(tmp_path / "artifacts"),
            "registered_model_name": f"public_{name}",
            "metric_threshold": 0.3 if name != "diabetes" else 0.2,
        }
    )


@pytest.mark.parametrize(("name", "target", "task", "model_types"), CASES, ids=[case[0] for case in CASES])
def test_every_stage_on_a_public_dataset(
    tmp_path: Path, source: DataSourceServer, name: str, target: str, task: str, model_types: list[str]
) -> None:
    declared = _config(tmp_path, f"{source.url}{DATASETS_PATH}/{name}.csv", name, target, model_types)
    run = "public-1"
    crawled = crawl(declared, run)
    cleaned = etl(declared, run=run, raw_data_path=crawled.data_path, raw_format=crawled.format)
    assert cleaned.task == task and cleaned.rows_out > 100
    config = resolved_config(declared, cleaned)
    # The resolved config round-trips through the run's records as the DAG freezes it.
    frozen = DataLayout.of(config.data_dir).run_records(run) / "config.resolved.json"
    atomic_write_json(frozen, config.model_dump(mode="json"))
    assert read_config(str(frozen)) == config and config.task == task
    if name == "penguins":  # the messy one: names as they come, NA strings, dates, free text, id-like columns
        features = config.dataset_schema.feature_names
        assert {"Culmen Length (mm)", "Delta 15 N (o/oo)", "Date Egg"} <= set(features)
        assert {"Comments", "Individual ID"} <= set(cleaned.excluded)

    trained = [
        train(config, run=run, processed_data_path=cleaned.data_path, data_sha256=crawled.sha256, candidate=c)
        for c in config.training_candidates()
    ]
    best, ranking = select_best(trained, config.validation_metric)
    decision = validate(config, run=run, candidate=best, ranking=ranking)
    assert decision.deploy, decision.reasons

    app = create_app(tracking_uri=config.mlflow_tracking_uri, model_name=config.registered_model_name, poll_seconds=0)
    with serve_in_thread(app) as url:
        config = config.model_copy(update={"serving_url": url})
        deployed = deploy(config, run=run, candidate=best, decision=decision)
        holdout = pd.read_parquet(best.holdout_path).drop(columns=[target]).head(3)
        answer = httpx.post(f"{url}/predict", json={"rows": json_rows(holdout)}, timeout=30).json()
        report = monitor(
            config,
            run=run,
            current_path=cleaned.data_path,
            reference_path=cleaned.data_path,
            holdout_path=best.holdout_path,
            expected_version=deployed.version,
        )
    assert answer["model_version"] == deployed.version and len(answer["predictions"]) == 3
    if task == "regression":
        assert all(isinstance(p, float) for p in answer["predictions"]) and "probabilities" not in answer
    else:
        assert set(answer["predictions"]) <= set(answer["classes"]) == set(best.classes)
        if task == "multiclass":
            assert all(set(p) == {str(c) for c in best.classes} for p in answer["probabilities"])
            assert all(abs(sum(p.values()) - 1) < 1e-6 for p in answer["probabilities"])
    assert report.to_dict()["alerts"] == [] or all("drift" in a for a in report.to_dict()["alerts"])
