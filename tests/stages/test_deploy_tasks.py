"""Deploy's smoke test compares the endpoint with the offline model for every task: a multiclass model (text labels,
a probability per class) and a regressor (numbers), both with odd column names, deployed through a live model
server; and the comparison itself flags a wrong label, a probability of any class or a number that differs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlpipeline.config import ColumnSpec, DatasetSchema, PipelineConfig, build_config
from mlpipeline.serving import create_app, serve_in_thread
from mlpipeline.stages.deploy import SMOKE_TOLERANCE, DeployError, _disagreement, deploy
from mlpipeline.stages.train import TrainResult
from mlpipeline.stages.validate import ValidationDecision
from tests import model_factory as mf
from tests.model_factory import Registry
from tests.serving import task_models as tm
from tests.serving.task_models import ServedModel

TARGETS = {"multiclass": "species (text)", "regression": "progression / 1y"}
MODEL_TYPES = {"multiclass": "hist_gradient_boosting", "regression": "ridge"}


@pytest.fixture(scope="module")
def reg() -> Registry:
    return mf.registry()


@pytest.fixture(scope="module")
def logged(reg: Registry) -> dict[str, ServedModel]:
    return {task: tm.log_model(reg, task, model_type) for task, model_type in MODEL_TYPES.items()}


def _name(task: str) -> str:
    return f"deploy_tasks_{task}"


@pytest.fixture(scope="module")
def urls(reg: Registry) -> Iterator[dict[str, str]]:
    apps = {task: create_app(tracking_uri=reg.tracking_uri, model_name=_name(task), poll_seconds=0) for task in TARGETS}
    with serve_in_thread(apps["multiclass"]) as multiclass, serve_in_thread(apps["regression"]) as regression:
        yield {"multiclass": multiclass, "regression": regression}


def _schema(task: str, data: tm.TaskData) -> DatasetSchema:
    columns = [ColumnSpec(name=name, type="numeric") for name in data.numeric]
    columns += [ColumnSpec(name=tm.ISLAND, type="categorical"), ColumnSpec(name=tm.DATE, type="date")]
    return DatasetSchema(target=TARGETS[task], columns=columns)


def _config(reg: Registry, tmp_path: Path, task: str, data: tm.TaskData, url: str) -> PipelineConfig:
    schema = _schema(task, data)
    config = build_config(
        {
            "data_dir": str(tmp_path / "data"),
            "mlflow_tracking_uri": reg.tracking_uri,
            "mlflow_artifact_location": str(reg.root / "deploy-tasks-artifacts"),
            "registered_model_name": _name(task),
            "serving_url": url,
            "serving_timeout_seconds": 30,
            "task": task,
            "ml_model_type": MODEL_TYPES[task],
            "dataset_schema": schema.model_dump(mode="json"),
        }
    )
    return config.resolved(task, schema)  # type: ignore[arg-type]


def _candidate(config: PipelineConfig, served: ServedModel, tmp_path: Path) -> TrainResult:
    """What train hands deploy: the logged model and the held-out rows (features + target) it was scored on,
    without gaps as the ETL leaves them (it imputes every feature)."""
    holdout = served.data.features.assign(**{config.dataset_schema.target: served.data.target}).dropna().iloc[::3]
    holdout_path = tmp_path / "holdout.parquet"
    holdout.to_parquet(holdout_path, index=False)
    return TrainResult(
        candidate=config.training_candidates()[0].name, mlflow_run_id=served.run_id, model_uri=served.model_uri,
        model_type=MODEL_TYPES[config.task], metrics={}, holdout_path=str(holdout_path), metrics_path="",
        processed_data_path="", data_sha256=f"sha-{config.task}", n_train=150, n_test=len(holdout), seconds=0.0,
    )  # fmt: skip


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_deploy_smoke_tests_every_task_against_the_offline_model(
    task: str, reg: Registry, logged: dict[str, ServedModel], urls: dict[str, str], tmp_path: Path
) -> None:
    served = logged[task]
    config = _config(reg, tmp_path, task, served.data, urls[task])
    candidate = _candidate(config, served, tmp_path)
    decision = ValidationDecision(
        deploy=True, metric=config.validation_metric, candidate_score=1.0, threshold=None, champion_version=None,
        champion_score=None, candidate=candidate.candidate, task=task,
    )  # fmt: skip
    result = deploy(config, run=f"deploy-{task}", candidate=candidate, decision=decision)
    assert result.smoke_test_rows == min(config.smoke_test_rows, candidate.n_test)
    assert result.max_probability_difference <= SMOKE_TOLERANCE
    assert httpx.get(f"{urls[task]}/model").json()["version"] == result.version
    answer = httpx.post(f"{urls[task]}/predict", json={"rows": served.rows(0, 2)}).json()
    assert ("probabilities" in answer) is (task == "multiclass")


# ---------------------------------------------------------------------------------------------------------------
# The comparison on its own: what counts as a disagreement, per task.
# ---------------------------------------------------------------------------------------------------------------


def _answer(served: ServedModel, rows: slice) -> tuple[Any, dict[str, Any]]:
    """(the offline model's input frame, the answer a faithful endpoint gives) for ``rows``."""
    features = served.data.features.iloc[rows]
    model = served.model
    if served.data.target.dtype == object:
        classes = [str(c) for c in model.classes_]
        probabilities = [dict(zip(classes, row, strict=True)) for row in model.predict_proba(features).tolist()]
        body = {"predictions": model.predict(features).tolist(), "probabilities": probabilities, "classes": classes}
    else:
        body = {"predictions": model.predict(features).tolist()}
    return features, body


def test_multiclass_disagreements_are_found_per_label_and_per_class(logged: dict[str, ServedModel]) -> None:
    served = logged["multiclass"]
    features, faithful = _answer(served, slice(0, 150, 10))
    assert _disagreement(served.model, features, faithful) == (0, 0.0, "probability")
    swapped = copy.deepcopy(faithful)
    swapped["predictions"][2] = next(c for c in served.model.classes_ if c != swapped["predictions"][2])
    assert _disagreement(served.model, features, swapped)[0] == 1
    nudged = copy.deepcopy(faithful)
    nudged["probabilities"][4]["Iris virginica"] += 1e-3  # the last class: a binary-only check would miss it
    mismatched, difference, _ = _disagreement(served.model, features, nudged)
    assert mismatched == 0 and difference == pytest.approx(1e-3)
    missing = copy.deepcopy(faithful)
    del missing["probabilities"][0]["Iris setosa"]
    with pytest.raises(DeployError, match="do not name the model's classes"):
        _disagreement(served.model, features, missing)
    with pytest.raises(DeployError, match="expected 15 predictions"):
        _disagreement(served.model, features, {**faithful, "predictions": faithful["predictions"][:-1]})


def test_regression_disagreements_are_numbers_beyond_the_tolerance(logged: dict[str, ServedModel]) -> None:
    served = logged["regression"]
    features, faithful = _answer(served, slice(0, 400, 20))
    assert _disagreement(served.model, features, faithful) == (0, 0.0, "prediction")
    # Large numbers may differ in their last bits (relative tolerance); a real difference may not.
    noisy = {"predictions": [p * (1 + 1e-12) for p in faithful["predictions"]]}
    assert _disagreement(served.model, features, noisy)[0] == 0
    off = {"predictions": [p + (0.5 if i in (3, 7) else 0.0) for i, p in enumerate(faithful["predictions"])]}
    mismatched, difference, what = _disagreement(served.model, features, off)
    assert (mismatched, what) == (2, "prediction") and difference > SMOKE_TOLERANCE
    with pytest.raises(DeployError, match="a regressor's predictions must be a list of numbers"):
        _disagreement(served.model, features, {"predictions": ["1.0"] * len(features)})


def test_binary_comparison_is_unchanged(reg: Registry) -> None:
    logged = reg.base(0)
    frame = mf.make_frame(20, seed=3)[mf.FEATURES]
    body = {
        "predictions": logged.model.predict(frame).tolist(),
        "probabilities": logged.model.predict_proba(frame)[:, 1].tolist(),
        "classes": [0, 1],
    }
    assert _disagreement(logged.model, frame, body) == (0, 0.0, "probability")
    body["probabilities"][5] += 0.01
    assert _disagreement(logged.model, frame, body) == (0, pytest.approx(0.01), "probability")
    body["predictions"][7] = 1 - body["predictions"][7]
    assert _disagreement(logged.model, frame, body)[0] == 1
