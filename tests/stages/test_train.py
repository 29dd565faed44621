from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlpipeline.config import ConfigError
from mlpipeline.integrity import DIGEST_TAG, SIGNATURE_TAG, SIGNING_KEY_ENV, IntegrityError, sign
from mlpipeline.registry import load_sklearn_model
from mlpipeline.stages.etl import EtlResult
from mlpipeline.stages.train import TrainError, check_candidates, evaluate, features_and_target, train
from mlpipeline.stages.validate import select_best
from tests.pipeline_data import Workspace, workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def processed(ws: Workspace) -> EtlResult:
    return ws.processed("data1")


def test_train_logs_a_reloadable_model_with_real_metrics(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config()
    result = train(config, run="t1", processed_data_path=processed.data_path, data_sha256="f" * 64)
    assert set(result.metrics) >= {"accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall"}
    assert 0.7 < result.metrics["accuracy"] < 0.95, "the bundled data is learnable but not trivial"
    holdout = pd.read_parquet(result.holdout_path)
    assert len(holdout) == result.n_test == round(processed.rows_out * config.test_size)
    metrics_file = json.loads(Path(result.metrics_path).read_text())
    assert (
        len(metrics_file["confusion_matrix"]) == 2 and sum(map(sum, metrics_file["confusion_matrix"])) == result.n_test
    )

    client = MlflowClient(ws.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["data_sha256"] == "f" * 64
    assert run.data.params["model_type"] == "hist_gradient_boosting"
    assert run.data.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])

    info = mlflow.models.get_model_info(result.model_uri)
    assert [c.name for c in info.signature.inputs.inputs] == config.dataset_schema.feature_names
    assert info.flavors["sklearn"]["serialization_format"] == "skops"
    # The signed digest of the model's files: on the run (where every load reads it) and in the train record.
    assert run.data.tags[DIGEST_TAG] == result.model_sha256 and len(result.model_sha256) == 64
    assert run.data.tags[SIGNATURE_TAG] == result.model_signature == sign(result.model_sha256)
    assert json.loads((Path(result.holdout_path).parent / "train.json").read_text())["model_signature"]
    reloaded = load_sklearn_model(result.model_uri, tracking_uri=ws.tracking_uri)
    features, target = features_and_target(holdout, config.dataset_schema)
    assert evaluate(reloaded, features, target)["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_rerunning_train_for_the_same_run_returns_the_same_result(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config()
    first = train(config, run="t2", processed_data_path=processed.data_path, data_sha256="x")
    again = train(config, run="t2", processed_data_path=processed.data_path, data_sha256="x")
    assert again == first
    runs = MlflowClient(ws.tracking_uri).search_runs(
        [MlflowClient(ws.tracking_uri).get_experiment_by_name("ml_pipeline").experiment_id],
        filter_string="tags.pipeline_run = 't2'",
    )
    assert len(runs) == 1


@pytest.mark.parametrize(
    ("model_type", "hyperparameters"),
    [("random_forest", {"n_estimators": 30}), ("logistic_regression", {"C": 0.5}), ("hist_gradient_boosting", {})],
)
def test_every_supported_model_type_trains(
    ws: Workspace, processed: EtlResult, model_type: str, hyperparameters: dict
) -> None:
    config = ws.config(ml_model_type=model_type, hyperparameters=hyperparameters)
    result = train(config, run=f"type-{model_type}", processed_data_path=processed.data_path, data_sha256="x")
    assert result.model_type == model_type
    assert result.metrics["roc_auc"] > 0.7
    # The reviewed trusted types cover every model type: it loads through the verifying loader as it scored.
    reloaded = load_sklearn_model(result.model_uri, tracking_uri=ws.tracking_uri)
    features, target = features_and_target(pd.read_parquet(result.holdout_path), config.dataset_schema)
    assert evaluate(reloaded, features, target)["roc_auc"] == pytest.approx(result.metrics["roc_auc"])


def test_without_a_signing_key_train_refuses_before_any_work(
    ws: Workspace, processed: EtlResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SIGNING_KEY_ENV)
    with pytest.raises(IntegrityError, match=f"{SIGNING_KEY_ENV} is not set.*no default key"):
        train(ws.config(), run="unkeyed", processed_data_path=processed.data_path, data_sha256="x")
    monkeypatch.setenv(SIGNING_KEY_ENV, "short")
    with pytest.raises(IntegrityError, match="too short"):
        train(ws.config(), run="unkeyed", processed_data_path=processed.data_path, data_sha256="x")
    assert not (ws.root / "data" / "models" / "unkeyed").exists()
    client = MlflowClient(ws.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments, filter_string="tags.pipeline_run = 'unkeyed'")


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [({"no_such_knob": 1}, "has no parameter"), ({"max_iter": -3}, "max_iter")],
)
def test_bad_hyperparameters_name_the_field(
    ws: Workspace, processed: EtlResult, hyperparameters: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"hyperparameters: .*{message}"):
        train(
            ws.config(hyperparameters=hyperparameters),
            run="bad",
            processed_data_path=processed.data_path,
            data_sha256="x",
        )
    assert not (ws.root / "data" / "models" / "bad").exists()


def test_a_single_class_target_cannot_train(ws: Workspace, processed: EtlResult, tmp_path: Path) -> None:
    frame = pd.read_parquet(processed.data_path).assign(churned=0)
    path = tmp_path / "one_class.parquet"
    frame.to_parquet(path)
    with pytest.raises(TrainError, match="single class"):
        train(ws.config(), run="one", processed_data_path=str(path), data_sha256="x")


def test_candidates_train_side_by_side_in_their_own_directories_and_the_best_is_selected(
    ws: Workspace, processed: EtlResult
) -> None:
    config = ws.config(
        candidates=[
            {
                "name": "stump",
                "ml_model_type": "hist_gradient_boosting",
                "hyperparameters": {"max_iter": 1, "max_depth": 1},
            },
            {"ml_model_type": "hist_gradient_boosting"},
            {"ml_model_type": "logistic_regression", "hyperparameters": {"C": 0.5}},
        ],
        validation_metric="roc_auc",
    )
    candidates = config.training_candidates()
    assert [c.name for c in candidates] == ["stump", "01_hist_gradient_boosting", "02_logistic_regression"]
    with pytest.raises(ValueError, match="3 candidates"):
        train(config, run="fan", processed_data_path=processed.data_path, data_sha256="x")
    results = [
        train(config, run="fan", processed_data_path=processed.data_path, data_sha256="x", candidate=c)
        for c in candidates
    ]
    assert [r.candidate for r in results] == [c.name for c in candidates]
    assert len({Path(r.metrics_path).parent for r in results}) == 3  # one directory each, nothing overwritten
    assert all(Path(r.metrics_path).parent.parent == ws.root / "data" / "models" / "fan" for r in results)
    # Same seed, same split: every candidate is scored on the same held-out rows.
    assert len({pd.read_parquet(r.holdout_path).to_json() for r in results}) == 1

    best, ranking = select_best(results, "roc_auc")
    scores = {r.candidate: r.metrics["roc_auc"] for r in results}
    assert best.candidate == max(scores, key=scores.get) != "stump"
    assert [row["candidate"] for row in ranking] == sorted(scores, key=scores.get, reverse=True)
    runs = MlflowClient(ws.tracking_uri).search_runs(
        [MlflowClient(ws.tracking_uri).get_experiment_by_name("ml_pipeline").experiment_id],
        filter_string="tags.pipeline_run = 'fan'",
    )
    assert sorted(run.data.tags["candidate"] for run in runs) == sorted(scores)


def test_select_best_breaks_ties_by_config_order_and_ranks_nan_last(ws: Workspace, processed: EtlResult) -> None:
    config = ws.config()
    result = train(config, run="tie", processed_data_path=processed.data_path, data_sha256="x")
    first = dataclasses.replace(result, candidate="first")
    second = dataclasses.replace(result, candidate="second")
    broken = dataclasses.replace(result, candidate="broken", metrics={**result.metrics, "accuracy": float("nan")})
    best, ranking = select_best([broken, first, second], "accuracy")
    assert best.candidate == "first"
    assert [row["candidate"] for row in ranking] == ["first", "second", "broken"]


def test_bad_candidate_hyperparameters_are_refused_before_any_work_naming_the_candidate(ws: Workspace) -> None:
    config = ws.config(
        candidates=[
            {"name": "ok", "ml_model_type": "random_forest"},
            {"name": "typo", "ml_model_type": "random_forest", "hyperparameters": {"n_estimator": 5}},
        ]
    )
    with pytest.raises(ConfigError, match=r"candidates\[typo\]: .*has no parameter"):
        check_candidates(config)
    check_candidates(ws.config())  # the default single candidate is valid
    with pytest.raises(ConfigError, match="duplicate candidate names"):
        ws.config(candidates=[{"name": "a", "ml_model_type": "random_forest"}] * 2)


def test_numeric_imputer_fills_exactly_the_medians_sklearn_median_strategy_would(processed: EtlResult) -> None:
    import numpy as np
    from sklearn.impute import SimpleImputer

    from mlpipeline.config import default_schema
    from mlpipeline.stages.train import build_pipeline

    schema = default_schema()
    features, target = features_and_target(pd.read_parquet(processed.data_path), schema)
    rng = np.random.default_rng(0)
    # Holes in every numeric column (odd and even counts of present values), so the medians are really computed.
    numeric = schema.columns_of_type("numeric", "integer", "boolean")
    holed = features.copy()
    holed[numeric] = holed[numeric].mask(rng.random((len(holed), len(numeric))) < 0.1)
    holed.loc[holed.index[:3], "monthly_charges"] = np.nan
    for model_type in ("hist_gradient_boosting", "logistic_regression"):
        pipeline = build_pipeline(schema, model_type, {}, 42).fit(holed, target)
        numeric_step = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
        ours = numeric_step.named_steps["impute"]
        reference = SimpleImputer(strategy="median").fit(
            pipeline.named_steps["dates"].transform(holed)[ours.feature_names_in_]
        )
        assert np.array_equal(ours.statistics_, reference.statistics_)
