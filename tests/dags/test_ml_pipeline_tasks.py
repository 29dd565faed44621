"""The DAG end to end (``airflow dags test``) on a multiclass and a regression dataset, both branches each.

The data is real and public (shipped inside installed packages, served by the stack's data source): penguins-raw
as recorded (odd column names, NA strings, dates, ids, free text) and scikit-learn's diabetes. The pipeline gets
them only through documented settings, as a user would: the Variables ``crawl_url``, ``dataset_schema`` (just the
target: the columns are inferred) and ``registered_model_name``, and a run's conf. Each dataset has its own
registered model and a model server for it, beside the churn tests' on the shared stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlpipeline.config import read_config
from mlpipeline.dev import public_datasets
from mlpipeline.dev.localstack import LocalStack, free_port
from mlpipeline.payload import json_rows
from mlpipeline.storage import DataLayout, read_json, run_key
from tests.conftest import dags_test, mailbox_subjects
from tests.dags.test_ml_pipeline import DEPLOY_PATH

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(1200)]

REJECT_PATH = ["start", "crawl_data", "check_data", "data_changed", "etl", "train_model", "validate_model", "decide"]


@contextmanager
def serving_dataset(stack: LocalStack, name: str) -> Iterator[str]:
    """The stack's pipeline pointed at a public dataset (Variables only), with a model server for its registered
    model; yields that server's URL. The stack's Variables are as before afterwards."""
    variables = stack.dataset_variables(name)
    url = stack.start_model_server(free_port(), variables["registered_model_name"])
    saved = dict(stack.variables)
    stack.variables.update({**variables, "serving_url": url})
    try:
        yield url
    finally:
        stack.variables.clear()
        stack.variables.update(saved)


def _champion(stack: LocalStack, model_name: str) -> str | None:
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    try:
        return str(client.get_model_version_by_alias(model_name, "champion").version)
    except Exception:
        return None


def _served(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/model", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _deployed_run(stack: LocalStack, conf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One run that must take the deploy path; returns its run key and the ETL's record."""
    run_id, states = dags_test(stack, conf)
    assert {task: states[task] for task in DEPLOY_PATH} == dict.fromkeys(DEPLOY_PATH, "success"), states
    assert states["retrain_alert"] == states["report_unchanged"] == "skipped"
    layout, run = DataLayout.of(stack.data_dir), run_key(run_id)
    return run, read_json(layout.processed(run) / "etl.json")


def _rejected_run(stack: LocalStack, conf: dict[str, Any], model_name: str, url: str) -> dict[str, Any]:
    """One run whose candidate misses the bar: the alert path, the champion kept and still served."""
    before, alerts = _champion(stack, model_name), _alerts(stack)
    assert before is not None
    run_id, states = dags_test(stack, conf)
    assert {task: states[task] for task in REJECT_PATH} == dict.fromkeys(REJECT_PATH, "success"), states
    assert states["retrain_alert"] == states["end"] == "success"
    for task in ("deploy_model", "monitor", "success_email", "report_unchanged"):
        assert states[task] == "skipped", task
    assert _champion(stack, model_name) == before == str(_served(url)["version"])
    assert _alerts(stack) == alerts + 1
    decision = read_json(DataLayout.of(stack.data_dir).run_records(run_key(run_id)) / "validate.json")
    assert decision["deploy"] is False
    return decision


def _alerts(stack: LocalStack) -> int:
    return sum(subject.startswith("[ml_pipeline] retrain needed") for subject in mailbox_subjects(stack))


def _resolved_and_frozen(stack: LocalStack, run: str) -> tuple[Any, Any]:
    records = DataLayout.of(stack.data_dir).run_records(run)
    return read_config(str(records / "config.resolved.json")), read_config(str(records / "config.json"))


def _holdout_rows(stack: LocalStack, run: str, features: list[str]) -> list[dict[str, Any]]:
    layout = DataLayout.of(stack.data_dir)
    decision = read_json(layout.run_records(run) / "validate.json")
    train = read_json(layout.models(run) / decision["candidate"] / "train.json")
    return json_rows(pd.read_parquet(train["holdout_path"], columns=features).head(25))


def test_penguins_raw_multiclass_with_an_inferred_schema_deploys_then_an_unreachable_bar_alerts(
    airflow_stack: LocalStack,
) -> None:
    dataset = public_datasets.get("penguins")
    species = sorted(dataset.frame()["Species"].unique())
    with serving_dataset(airflow_stack, "penguins") as url:
        run, etl = _deployed_run(airflow_stack, {})
        resolved, frozen = _resolved_and_frozen(airflow_stack, run)
        assert frozen.dataset_schema.columns is None and frozen.task == "auto"  # nothing but the target was given
        assert (resolved.task, resolved.validation_metric) == ("multiclass", "accuracy")
        features = resolved.dataset_schema.feature_names
        assert "Species" not in features and {"Culmen Length (mm)", "Island"} <= set(features)
        assert (etl["task"], etl["classes"]) == ("multiclass", species)

        decision = read_json(DataLayout.of(airflow_stack.data_dir).run_records(run) / "validate.json")
        assert decision["deploy"] is True and decision["metric"] == "accuracy"
        assert decision["candidate_score"] >= decision["threshold"] == 0.75
        champion = _champion(airflow_stack, "penguins_classifier")
        assert champion is not None and str(_served(url)["version"]) == champion
        deployment = read_json(DataLayout.of(airflow_stack.data_dir).run_records(run) / "deploy.json")
        assert (deployment["model_name"], deployment["version"]) == ("penguins_classifier", champion)
        assert any(
            s.startswith(f"[ml_pipeline] deployed penguins_classifier v{champion}")
            for s in mailbox_subjects(airflow_stack)
        )

        rows = _holdout_rows(airflow_stack, run, features)
        answer = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=30).json()
        assert answer["classes"] == species
        assert len(answer["predictions"]) == len(answer["probabilities"]) == len(rows)
        assert set(answer["predictions"]) <= set(species)
        for label, probabilities in zip(answer["predictions"], answer["probabilities"], strict=True):
            assert sorted(probabilities) == species
            assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)
            assert max(probabilities, key=probabilities.get) == label

        # log_loss is better lower: a bar of 0 is out of reach of any model that is not certain of every row.
        decision = _rejected_run(
            airflow_stack, {"validation_metric": "log_loss", "metric_threshold": 0}, "penguins_classifier", url
        )
        assert (decision["metric"], decision["threshold"]) == ("log_loss", 0)
        assert decision["candidate_score"] > 0


def test_diabetes_regression_deploys_then_an_unreachable_bar_alerts(airflow_stack: LocalStack) -> None:
    with serving_dataset(airflow_stack, "diabetes") as url:
        run, etl = _deployed_run(airflow_stack, {})
        resolved, _ = _resolved_and_frozen(airflow_stack, run)
        assert (resolved.task, resolved.validation_metric) == ("regression", "r2")
        assert (etl["task"], etl["classes"]) == ("regression", [])
        decision = read_json(DataLayout.of(airflow_stack.data_dir).run_records(run) / "validate.json")
        assert decision["deploy"] is True and decision["metric"] == "r2"
        assert 0 < decision["candidate_score"] < 1 and decision["threshold"] == 0.0
        champion = _champion(airflow_stack, "diabetes_regressor")
        assert champion is not None and str(_served(url)["version"]) == champion

        rows = _holdout_rows(airflow_stack, run, resolved.dataset_schema.feature_names)
        answer = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=30).json()
        assert len(answer["predictions"]) == len(rows)
        assert all(isinstance(value, float) and math.isfinite(value) for value in answer["predictions"])
        assert answer.get("probabilities") is None and not answer.get("classes")
        progression = public_datasets.get("diabetes").frame()["progression"]
        # Predictions of a progression score, not class codes: within the range the target takes.
        assert progression.min() - 50 < min(answer["predictions"]) < max(answer["predictions"]) < progression.max()

        # rmse is better lower: 0 is a perfect fit, out of reach on held-out rows.
        decision = _rejected_run(
            airflow_stack, {"validation_metric": "rmse", "metric_threshold": 0}, "diabetes_regressor", url
        )
        assert (decision["metric"], decision["threshold"]) == ("rmse", 0)
        assert decision["candidate_score"] > 0
