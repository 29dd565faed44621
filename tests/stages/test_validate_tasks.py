"""validate for every task against a real MLflow registry (SQLite): the metric's direction decides who is better,
and a champion of another problem is not compared."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import PipelineConfig
from mlpipeline.registry import use_tracking
from mlpipeline.stages.train import TrainResult, train
from mlpipeline.stages.validate import beats_champion, validate
from tests.pipeline_data import Workspace, workspace
from tests.stages.test_train import sklearn_dataset, task_config

# A deliberately weak regressor: one shallow boosting step barely moves off the mean.
WEAK = {"max_iter": 1, "max_depth": 1, "learning_rate": 0.05}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("validate_tasks"))


@pytest.fixture(scope="module")
def diabetes(ws: Workspace) -> tuple[str, dict]:
    return sklearn_dataset(ws.root, "diabetes")


def regression_config(ws: Workspace, schema: dict, model: str, **overrides: object) -> PipelineConfig:
    return task_config(ws, "regression", schema, validation_metric="rmse", registered_model_name=model, **overrides)


@pytest.fixture(scope="module")
def regressors(ws: Workspace, diabetes: tuple[str, dict]) -> dict[str, TrainResult]:
    """A good regressor (ridge) and a weak one, trained on the same rows and split."""
    path, schema = diabetes
    good = train(
        regression_config(ws, schema, "m", ml_model_type="ridge"),
        run="ridge",
        processed_data_path=path,
        data_sha256="d",
    )
    weak = train(
        regression_config(ws, schema, "m", hyperparameters=WEAK), run="weak", processed_data_path=path, data_sha256="d"
    )
    assert good.metrics["rmse"] < weak.metrics["rmse"] and good.task == weak.task == "regression"
    return {"good": good, "weak": weak}


def make_champion(config: PipelineConfig, result: TrainResult) -> str:
    """Register ``result`` under the config's model name and point the champion alias at it (as deploy does)."""
    client = use_tracking(config)
    version = str(mlflow.register_model(result.model_uri, config.registered_model_name).version)
    client.set_registered_model_alias(config.registered_model_name, config.champion_alias, version)
    return version


def test_a_lower_rmse_replaces_the_champion_and_a_higher_one_is_rejected(
    ws: Workspace, diabetes: tuple[str, dict], regressors: dict[str, TrainResult]
) -> None:
    _, schema = diabetes
    good, weak = regressors["good"], regressors["weak"]
    config = regression_config(ws, schema, "rmse_champion")
    weak_version = make_champion(config, weak)

    better = validate(config, run="ridge", candidate=good)
    assert better.deploy and better.threshold is None and better.task == "regression"
    assert better.champion_version == weak_version
    assert better.champion_score == pytest.approx(weak.metrics["rmse"])
    assert better.reasons[0] == f"candidate rmse {good.metrics['rmse']:.4f} (lower is better): no threshold" + (
        " (metric_threshold is unset and rmse has no default bar)"
    )
    assert (
        f"< champion v{weak_version} {weak.metrics['rmse']:.4f} on the same held-out rows (lower is better): "
        "it replaces the champion" in better.reasons[1]
    )
    assert json.loads(Path(better.record_path).read_text())["deploy"] is True

    good_version = make_champion(config, good)
    worse = validate(config, run="weak", candidate=weak)
    assert not worse.deploy and worse.champion_version == good_version
    assert worse.champion_score == pytest.approx(good.metrics["rmse"])
    assert f"> champion v{good_version}" in worse.reasons[1] and "the champion stays" in worse.reasons[1]

    # The margin asks for more than the gap: a better rmse is not better enough. A tolerance lets a worse one in.
    gap = weak.metrics["rmse"] - good.metrics["rmse"]
    make_champion(config, weak)
    demanding = regression_config(ws, schema, "rmse_champion", champion_margin=gap + 0.01)
    assert not validate(demanding, run="ridge", candidate=good).deploy
    make_champion(config, good)
    tolerant = regression_config(ws, schema, "rmse_champion", champion_tolerance=gap + 0.01)
    assert validate(tolerant, run="weak", candidate=weak).deploy


def test_a_lower_is_better_threshold_is_a_ceiling(
    ws: Workspace, diabetes: tuple[str, dict], regressors: dict[str, TrainResult]
) -> None:
    _, schema = diabetes
    good = regressors["good"]
    rmse = good.metrics["rmse"]
    high = validate(regression_config(ws, schema, "no_champion", metric_threshold=70), run="ridge", candidate=good)
    assert high.deploy and high.threshold == 70
    assert high.reasons == [
        f"candidate rmse {rmse:.4f} <= threshold 70.0000 (lower is better)",
        "no champion yet: the threshold alone decides",
    ]
    low = validate(regression_config(ws, schema, "no_champion", metric_threshold=40), run="ridge", candidate=good)
    assert not low.deploy
    assert low.reasons[0] == f"candidate rmse {rmse:.4f} > threshold 40.0000 (lower is better)"
    unbarred = validate(regression_config(ws, schema, "no_champion"), run="ridge", candidate=good)
    assert unbarred.deploy and unbarred.reasons[1] == "no champion yet: no threshold either: any real score passes"
    # r2's default bar (0: better than the mean) still points up.
    r2 = validate(
        task_config(ws, "regression", schema, registered_model_name="no_champion"), run="ridge", candidate=good
    )
    assert r2.metric == "r2" and r2.threshold == 0.0 and r2.deploy
    assert r2.reasons[0] == f"candidate r2 {good.metrics['r2']:.4f} >= threshold 0.0000"


@pytest.mark.parametrize(
    ("metric", "settings", "score", "champion", "replaces"),
    [
        ("rmse", {}, 3.0, 3.0, False),
        ("rmse", {}, 2.99, 3.0, True),
        ("rmse", {}, 3.01, 3.0, False),
        ("rmse", {"champion_margin": 0.5}, 2.6, 3.0, False),
        ("rmse", {"champion_margin": 0.5}, 2.4, 3.0, True),
        ("rmse", {"champion_tolerance": 0.1}, 3.09, 3.0, True),
        ("rmse", {"champion_tolerance": 0.1}, 3.11, 3.0, False),
        ("log_loss", {}, 0.2, 0.3, True),
        ("r2", {"champion_tolerance": 0.1}, 0.35, 0.4, True),
        ("r2", {}, 0.35, 0.4, False),
        ("rmse", {}, float("nan"), 3.0, False),
        ("rmse", {"champion_tolerance": 0.1}, float("nan"), 3.0, False),
        ("rmse", {}, 3.0, float("nan"), True),
    ],
)
def test_beats_champion_in_the_metric_direction(
    ws: Workspace, metric: str, settings: dict, score: float, champion: float, replaces: bool
) -> None:
    task = "binary" if metric == "log_loss" else "regression"
    config = ws.config(resolved=False, task=task, validation_metric=metric, **settings)
    assert beats_champion(config, score, champion) is replaces


def iris_regression(root: Path) -> tuple[str, dict]:
    """Iris's four measurements predicting a quantity (a noisy sum of them): the same columns as iris."""
    path, schema = sklearn_dataset(root, "iris")
    frame = pd.read_parquet(path)
    features = [c["name"] for c in schema["columns"]]
    noise = np.random.default_rng(0).normal(0, 0.3, len(frame))
    frame["target"] = frame[features].sum(axis=1) + noise
    frame.to_parquet(root / "iris_sum.parquet", index=False)
    return str(root / "iris_sum.parquet"), schema


def test_a_champion_of_another_problem_is_not_compared_and_the_threshold_decides(
    ws: Workspace, diabetes: tuple[str, dict], regressors: dict[str, TrainResult]
) -> None:
    # A churn classifier serves; the data is now a quantity (diabetes progression).
    churn = ws.config(registered_model_name="task_changed")
    classifier = train(churn, run="churn", processed_data_path=ws.processed("churn").data_path, data_sha256="c")
    version = make_champion(churn, classifier)
    _, schema = diabetes
    config = regression_config(ws, schema, "task_changed", metric_threshold=70)
    decision = validate(config, run="ridge", candidate=regressors["good"])
    assert decision.deploy and decision.champion_version == version and decision.champion_score is None
    assert decision.reasons[1] == (
        f"champion v{version} is not comparable: it is a classifier (classes [0, 1]) and this run's target is a "
        "quantity (regression); once deployed, /predict answers numbers instead of labels. It cannot be scored on "
        "these rows: the threshold alone decides"
    )
    # ... and the threshold still bars a candidate that misses it.
    strict = regression_config(ws, schema, "task_changed", metric_threshold=40)
    assert not validate(strict, run="ridge", candidate=regressors["good"]).deploy


def test_champions_of_other_classes_or_a_regressor_are_not_compared_with_a_multiclass_candidate(
    ws: Workspace,
) -> None:
    text_path, schema = sklearn_dataset(ws.root, "iris", text_labels=True)
    number_path, _ = sklearn_dataset(ws.root, "iris")
    sum_path, _ = iris_regression(ws.root)

    def trained(task: str, run: str, path: str, **overrides: object) -> tuple[PipelineConfig, TrainResult]:
        model = {"ml_model_type": "random_forest", "hyperparameters": {"n_estimators": 20}}
        config = task_config(ws, task, schema, registered_model_name="iris", **model, **overrides)
        return config, train(config, run=run, processed_data_path=path, data_sha256=run)

    config, labels = trained("multiclass", "iris-text", text_path)
    _, numbers = trained("multiclass", "iris-numbers", number_path)
    _, quantity = trained("regression", "iris-sum", sum_path)
    assert labels.classes == ["setosa", "versicolor", "virginica"] and numbers.classes == [0, 1, 2]

    version = make_champion(config, numbers)
    other_classes = validate(config, run="iris-text", candidate=labels)
    assert other_classes.deploy and other_classes.champion_score is None
    assert (
        f"champion v{version} is not comparable: its classes [0, 1, 2] are not this run's ['setosa', 'versicolor', "
        "'virginica'] (multiclass)" in other_classes.reasons[1]
    )
    version = make_champion(config, quantity)
    regressor = validate(config, run="iris-text", candidate=labels)
    assert regressor.deploy and regressor.champion_score is None
    assert (
        f"champion v{version} is not comparable: it is a regressor and this run is multiclass" in regressor.reasons[1]
    )

    # The same problem is compared, in the metric's direction (log_loss: lower is better).
    log_loss = config.model_copy(update={"validation_metric": "log_loss"})
    version = make_champion(config, labels)
    same = validate(log_loss, run="iris-text", candidate=labels)
    assert same.champion_score == pytest.approx(labels.metrics["log_loss"]) and not same.deploy
    assert f"= champion v{version}" in same.reasons[-1] and "(lower is better): the champion stays" in same.reasons[-1]


def test_a_metric_that_does_not_fit_the_candidate_is_refused(
    ws: Workspace, diabetes: tuple[str, dict], regressors: dict[str, TrainResult]
) -> None:
    config = ws.config(resolved=False, validation_metric="roc_auc")
    with pytest.raises(ValueError, match="validation_metric 'roc_auc' does not fit a regression task"):
        validate(config, run="ridge", candidate=regressors["good"])


def test_a_binary_champion_whose_positive_class_was_the_other_label_is_not_compared(ws: Workspace) -> None:
    churn = ws.config(registered_model_name="flipped")
    processed = ws.processed("flip").data_path
    champion = train(churn, run="flip-1", processed_data_path=processed, data_sha256="f")
    assert use_tracking(churn).get_run(champion.mlflow_run_id).data.tags["positive_label"] == "1"
    version = make_champion(churn, champion)
    same = validate(churn, run="flip-1", candidate=champion)
    assert same.champion_score is not None  # the same positive class: scored on the same rows
    flipped_schema = {**churn.dataset_schema.model_dump(), "positive_label": "0"}
    flipped = ws.config(registered_model_name="flipped", dataset_schema=flipped_schema)
    decision = validate(flipped, run="flip-1", candidate=champion)
    assert decision.champion_version == version and decision.champion_score is None
    assert "its positive class is '1' and this run's is '0'" in decision.reasons[1]
