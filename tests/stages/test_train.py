from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlpipeline.config import ConfigError, PipelineConfig
from mlpipeline.integrity import DIGEST_TAG, SIGNATURE_TAG, SIGNING_KEY_ENV, IntegrityError, sign
from mlpipeline.registry import load_sklearn_model
from mlpipeline.stages.etl import EtlResult
from mlpipeline.stages.evaluation import evaluate
from mlpipeline.stages.train import TrainError, check_candidates, features_and_target, train
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
    assert evaluate(reloaded, features, target, "binary")["accuracy"] == pytest.approx(result.metrics["accuracy"])


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
    assert evaluate(reloaded, features, target, "binary")["roc_auc"] == pytest.approx(result.metrics["roc_auc"])


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
        ours = pipeline.named_steps["preprocess"].imputer_
        reference = SimpleImputer(strategy="median").fit(
            pipeline.named_steps["dates"].transform(holed)[ours.feature_names_in_]
        )
        assert np.array_equal(ours.statistics_, reference.statistics_)


# --- multiclass and regression ------------------------------------------------------------------------------------


def sklearn_dataset(root: Path, name: str, *, text_labels: bool = False) -> tuple[str, dict]:
    """One of scikit-learn's bundled datasets as a processed-like parquet (numeric features, the target as the ETL
    writes it for its task) and the dataset_schema that describes it."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.rename(columns=lambda column: column.replace(" ", "_").replace("(", "").replace(")", ""))
    if text_labels:
        frame["target"] = bunch.target_names[bunch.target.to_numpy()].astype(object)
    path = root / f"{name}{'_labels' if text_labels else ''}.parquet"
    frame.to_parquet(path, index=False)
    columns = [{"name": column, "type": "numeric"} for column in frame.columns if column != "target"]
    return str(path), {"target": "target", "columns": columns}


def task_config(ws: Workspace, task: str, schema: dict, **overrides: object) -> PipelineConfig:
    """A config as the ETL resolves it for ``task`` (``auto``: as ``start`` freezes it, unresolved)."""
    config = ws.config(resolved=False, task=task, dataset_schema=schema, **{"hyperparameters": {}, **overrides})
    return config if task == "auto" else config.resolved(task, config.dataset_schema)


@pytest.fixture(scope="module")
def iris(ws: Workspace) -> tuple[str, dict]:
    return sklearn_dataset(ws.root, "iris", text_labels=True)


@pytest.fixture(scope="module")
def diabetes(ws: Workspace) -> tuple[str, dict]:
    return sklearn_dataset(ws.root, "diabetes")


@pytest.mark.parametrize("model_type", ["hist_gradient_boosting", "logistic_regression", "random_forest"])
def test_multiclass_with_text_labels_trains_and_scores_every_multiclass_metric(
    ws: Workspace, iris: tuple[str, dict], model_type: str
) -> None:
    path, schema = iris
    config = task_config(ws, "multiclass", schema, ml_model_type=model_type)
    result = train(config, run=f"iris-{model_type}", processed_data_path=path, data_sha256="i")
    assert result.task == "multiclass" and result.classes == ["setosa", "versicolor", "virginica"]
    assert set(result.metrics) == {"accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "log_loss"}
    assert result.metrics["accuracy"] > 0.85 and result.metrics["roc_auc_ovr"] > 0.95
    assert 0 < result.metrics["log_loss"] < 2, "finite: the probabilities are over the model's classes"
    metrics_file = json.loads(Path(result.metrics_path).read_text())
    assert metrics_file["confusion_matrix_labels"] == result.classes
    matrix = metrics_file["confusion_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix) and sum(map(sum, matrix)) == result.n_test == 30
    # Stratified: every class is in the held-out rows as often as in the data (10 of 50 each).
    holdout = pd.read_parquet(result.holdout_path)
    assert holdout["target"].value_counts().to_dict() == {"setosa": 10, "versicolor": 10, "virginica": 10}

    run = MlflowClient(ws.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["task"] == "multiclass" and run.data.params["n_classes"] == "3"
    assert run.data.tags["task"] == "multiclass" and json.loads(run.data.tags["classes"]) == result.classes
    # The labels stay text: nothing cast them to numbers on the way, and the reloaded model scores as it did.
    reloaded = load_sklearn_model(result.model_uri, tracking_uri=ws.tracking_uri)
    features, target = features_and_target(holdout, config.dataset_schema, "multiclass")
    assert target.dtype == object and set(reloaded.predict(features)) <= set(result.classes)
    again = evaluate(reloaded, features, target, "multiclass")
    assert again["log_loss"] == pytest.approx(result.metrics["log_loss"])


def test_multiclass_with_integer_labels_keeps_them_integers(ws: Workspace) -> None:
    path, schema = sklearn_dataset(ws.root, "wine")
    config = task_config(ws, "auto", schema, validation_metric="f1_macro")  # the target decides
    result = train(config, run="wine", processed_data_path=path, data_sha256="w")
    assert result.task == "multiclass" and result.classes == [0, 1, 2]
    assert result.metrics["f1_macro"] > 0.85
    assert pd.read_parquet(result.holdout_path)["target"].dtype == "int64"


@pytest.mark.parametrize("model_type", ["ridge", "hist_gradient_boosting", "random_forest"])
def test_regression_trains_every_regressor_with_a_plain_split(
    ws: Workspace, diabetes: tuple[str, dict], model_type: str
) -> None:
    from sklearn.base import is_regressor

    path, schema = diabetes
    config = task_config(ws, "regression", schema, ml_model_type=model_type)
    result = train(config, run=f"diabetes-{model_type}", processed_data_path=path, data_sha256="d")
    assert result.task == "regression" and result.classes == []
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert 0.2 < result.metrics["r2"] < 0.7, "diabetes progression is partly predictable from these features"
    assert 40 < result.metrics["mae"] < result.metrics["rmse"] < 70
    assert "confusion_matrix" not in json.loads(Path(result.metrics_path).read_text())

    reloaded = load_sklearn_model(result.model_uri, tracking_uri=ws.tracking_uri)
    assert is_regressor(reloaded) and not hasattr(reloaded, "predict_proba")
    scaled = reloaded.named_steps["preprocess"].scale
    assert scaled is (model_type == "ridge")
    holdout = pd.read_parquet(result.holdout_path)
    assert holdout["target"].dtype == "float64" and len(holdout) == result.n_test == 89
    features, target = features_and_target(holdout, config.dataset_schema, "regression")
    assert evaluate(reloaded, features, target, "regression")["rmse"] == pytest.approx(result.metrics["rmse"])
    run = MlflowClient(ws.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["task"] == "regression" and "classes" not in run.data.tags


def test_regression_and_multiclass_are_split_the_way_their_task_needs(
    ws: Workspace, diabetes: tuple[str, dict]
) -> None:
    from sklearn.model_selection import train_test_split

    path, schema = diabetes
    config = task_config(ws, "regression", schema, ml_model_type="ridge")
    result = train(config, run="diabetes-ridge", processed_data_path=path, data_sha256="d")
    frame = pd.read_parquet(path)
    _, expected = train_test_split(frame, test_size=config.test_size, random_state=config.random_state)
    assert pd.read_parquet(result.holdout_path)["target"].tolist() == expected["target"].tolist()


def test_a_class_too_rare_to_split_and_a_constant_quantity_are_refused(ws: Workspace, tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [float(i) for i in range(40)], "target": ["a"] * 20 + ["b"] * 19 + ["c"]})
    frame.to_parquet(tmp_path / "rare.parquet")
    schema = {"target": "target", "columns": [{"name": "x", "type": "numeric"}]}
    config = task_config(ws, "multiclass", schema)
    with pytest.raises(TrainError, match=r"cannot split 40 rows \(multiclass.*rarest classes: .*'c': 1"):
        train(config, run="rare", processed_data_path=str(tmp_path / "rare.parquet"), data_sha256="x")
    frame.assign(target=3.5).to_parquet(tmp_path / "constant.parquet")
    regression = task_config(ws, "regression", schema)
    with pytest.raises(TrainError, match="a single value"):
        train(regression, run="constant", processed_data_path=str(tmp_path / "constant.parquet"), data_sha256="x")


def test_evaluate_says_nan_where_a_metric_is_undefined(ws: Workspace, iris: tuple[str, dict]) -> None:
    path, schema = iris
    config = task_config(ws, "multiclass", schema, ml_model_type="logistic_regression")
    result = train(config, run="iris-logistic_regression", processed_data_path=path, data_sha256="i")
    model = load_sklearn_model(result.model_uri, tracking_uri=ws.tracking_uri)
    features, target = features_and_target(pd.read_parquet(result.holdout_path), config.dataset_schema)
    only_setosa = target == "setosa"
    metrics = evaluate(model, features[only_setosa], target[only_setosa], "multiclass")
    assert math.isnan(metrics["roc_auc_ovr"]) and metrics["accuracy"] == 1.0
    assert metrics["log_loss"] < 0.2  # defined: the labels are the model's classes, not the rows'
    assert metrics["confusion_matrix"] == [[10, 0, 0], [0, 0, 0], [0, 0, 0]]
    one_row = evaluate(model, features.head(1), target.head(1), "multiclass")
    assert math.isnan(one_row["roc_auc_ovr"])


def test_select_best_ranks_lower_is_better_metrics_lowest_first(ws: Workspace, diabetes: tuple[str, dict]) -> None:
    path, schema = diabetes
    config = task_config(ws, "regression", schema, ml_model_type="ridge")
    result = train(config, run="diabetes-ridge", processed_data_path=path, data_sha256="d")

    def scored(name: str, **metrics: float) -> object:
        return dataclasses.replace(result, candidate=name, metrics={**result.metrics, **metrics})

    results = [scored("worse", rmse=60.0), scored("broken", rmse=float("nan")), scored("best", rmse=50.0)]
    results.append(scored("tied", rmse=50.0))
    best, ranking = select_best(results, "rmse")
    assert best.candidate == "best"
    assert [row["candidate"] for row in ranking] == ["best", "tied", "worse", "broken"]
    assert ranking[0]["rmse"] == 50.0
    by_r2 = select_best([scored("low", r2=0.1), scored("high", r2=0.4)], "r2")[0]
    assert by_r2.candidate == "high"
    losses = [scored("sure", log_loss=0.2), scored("unsure", log_loss=0.9), scored("nan", log_loss=float("nan"))]
    assert [row["candidate"] for row in select_best(losses[::-1], "log_loss")[1]] == ["sure", "unsure", "nan"]


def test_auto_task_checks_hyperparameters_against_the_classifier_and_the_regressor(ws: Workspace) -> None:
    # class_weight exists only for the forest classifier: while the task is auto, either may be built.
    check_candidates(
        ws.config(resolved=False, ml_model_type="random_forest", hyperparameters={"class_weight": "balanced"})
    )
    with pytest.raises(ConfigError, match=r"RandomForestRegressor has no parameter.*class_weight"):
        check_candidates(
            ws.config(
                resolved=False,
                task="regression",
                ml_model_type="random_forest",
                hyperparameters={"class_weight": "balanced"},
            )
        )
    with pytest.raises(
        ConfigError,
        match=r"hyperparameters: neither RandomForestClassifier nor RandomForestRegressor accepts them.*"
        r"RandomForestClassifier has no parameter\(s\) \['n_estimator'\].*\| RandomForestRegressor has no",
    ):
        check_candidates(ws.config(resolved=False, ml_model_type="random_forest", hyperparameters={"n_estimator": 5}))
    # A model type of one kind only is checked against that one.
    check_candidates(ws.config(resolved=False, ml_model_type="ridge", hyperparameters={"alpha": 0.5}))
    with pytest.raises(ConfigError, match=r"hyperparameters: Ridge has no parameter\(s\) \['C'\]"):
        check_candidates(ws.config(resolved=False, ml_model_type="ridge", hyperparameters={"C": 0.5}))
    with pytest.raises(ConfigError, match=r"candidates\[slow\]: neither HistGradientBoostingClassifier nor"):
        check_candidates(
            ws.config(
                resolved=False,
                candidates=[
                    {"name": "slow", "ml_model_type": "hist_gradient_boosting", "hyperparameters": {"max_iter": 0}}
                ],
            )
        )
