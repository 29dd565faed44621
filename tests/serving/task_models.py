"""Multiclass and regression models for the serving tests, built and logged the way the train stage does.

The pipeline has the train stage's shape (steps ``dates``, ``preprocess``, ``model``: DateParts, a ColumnTransformer
with a median imputer (+ scaler for linear models) for numbers and date parts, most-frequent imputer + dense one-hot
for categories, then the estimator). The data are scikit-learn's bundled iris (multiclass, text labels) and diabetes
(regression) sets, with column names as real exports have them (spaces, slashes, brackets, dots), a categorical and
a date column, and gaps, so every compiled step of the fast path is exercised.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipeline.features import DateParts, date_part_columns
from mlpipeline.payload import json_rows
from mlpipeline.registry import log_sklearn_model
from tests.model_factory import Registry

ISLAND = "Island / site"
DATE = "Date Egg (UTC)"
IRIS_NUMERIC = ["Culmen Length (mm)", "Delta 15 N (o/oo)", "petal width / cm", "petal.length"]
DIABETES_NUMERIC = ["age", "BMI (kg/m2)", "bp", "s1 / tc", "s2 (ldl)", "s3.hdl", "s4", "s5 ltg", "s6"]
ISLANDS = ["Biscoe", "Dream", "Torgersen"]
SPECIES = {0: "Iris setosa", 1: "Iris versicolor", 2: "Iris virginica"}

ESTIMATORS: dict[str, dict[str, Any]] = {
    "multiclass": {
        "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
        "random_forest": lambda: RandomForestClassifier(n_estimators=10, random_state=0, n_jobs=1),
        "logistic_regression": lambda: LogisticRegression(max_iter=1000, random_state=0),
    },
    "regression": {
        "hist_gradient_boosting": lambda: HistGradientBoostingRegressor(max_iter=30, random_state=0),
        "random_forest": lambda: RandomForestRegressor(n_estimators=10, random_state=0, n_jobs=1),
        "ridge": lambda: Ridge(),
    },
}


@dataclass(frozen=True)
class TaskData:
    features: pd.DataFrame
    target: pd.Series
    numeric: list[str]

    @property
    def feature_names(self) -> list[str]:
        return list(self.features.columns)


def _with_extras(numbers: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The numeric columns plus a categorical and a date column, with a few gaps everywhere."""
    rng = np.random.default_rng(seed)
    n = len(numbers)
    frame = numbers.astype("float64").reset_index(drop=True)
    frame[ISLAND] = pd.Series(rng.choice(ISLANDS, n), dtype=object)
    frame[DATE] = np.datetime64("2007-11-01", "ns") + rng.integers(0, 900, n).astype("timedelta64[D]")
    for column in frame.columns:
        gaps = rng.random(n) < 0.04
        frame.loc[gaps, column] = pd.NaT if column == DATE else np.nan
    return frame


def iris_data(seed: int = 0) -> TaskData:
    iris = load_iris(as_frame=True)
    numbers = iris.data.set_axis(IRIS_NUMERIC, axis=1)
    target = iris.target.map(SPECIES).astype(object).reset_index(drop=True)
    return TaskData(_with_extras(numbers, seed), target, IRIS_NUMERIC)


def diabetes_data(seed: int = 0) -> TaskData:
    diabetes = load_diabetes(as_frame=True)
    numbers = diabetes.data.drop(columns="sex").set_axis(DIABETES_NUMERIC, axis=1)
    target = diabetes.target.astype("float64").reset_index(drop=True)
    return TaskData(_with_extras(numbers, seed), target, DIABETES_NUMERIC)


def data_for(task: str) -> TaskData:
    return iris_data() if task == "multiclass" else diabetes_data()


def build_pipeline(task: str, model_type: str, data: TaskData) -> Pipeline:
    """The train stage's pipeline shape for ``data``'s columns."""
    numeric = data.numeric + date_part_columns(DATE)
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=np.median))]
    if model_type in ("logistic_regression", "ridge"):
        numeric_steps.append(("scale", StandardScaler()))
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [("numeric", Pipeline(numeric_steps), numeric), ("categorical", categorical, [ISLAND])], remainder="drop"
    )
    estimator = ESTIMATORS[task][model_type]()
    return Pipeline([("dates", DateParts([DATE])), ("preprocess", preprocess), ("model", estimator)])


def fitted(task: str, model_type: str) -> tuple[Pipeline, TaskData]:
    data = data_for(task)
    return build_pipeline(task, model_type, data).fit(data.features, data.target), data


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    model: Pipeline
    data: TaskData
    model_uri: str
    run_id: str

    def rows(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        return json_rows(self.data.features.iloc[start:stop])


def log_model(reg: Registry, task: str, model_type: str) -> ServedModel:
    """Fit, log and sign like the train stage (signature, input example, signed digest on the run); unregistered."""
    import mlflow
    from mlflow.models import infer_signature

    # The fluent API logs to the process-global URI, which a stage run earlier in this process may have moved.
    mlflow.set_tracking_uri(reg.tracking_uri)
    mlflow.set_registry_uri(reg.tracking_uri)
    model, data = fitted(task, model_type)
    example = data.features.head(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's integer-column and missing-value hints
        signature = infer_signature(example, model.predict(example))
        with mlflow.start_run(experiment_id=reg.experiment_id) as run:
            info = log_sklearn_model(model, signature=signature, input_example=example)
    return ServedModel("", "", model, data, info.model_uri, run.info.run_id)


def log_and_register(
    reg: Registry, name: str, task: str, model_type: str, *, alias: str | None = "champion"
) -> ServedModel:
    """:func:`log_model`, then registered under ``name`` (``alias`` set) as the deploy stage registers."""
    import mlflow

    logged = log_model(reg, task, model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version = str(mlflow.register_model(logged.model_uri, name).version)
    if alias is not None:
        reg.set_alias(name, version, alias)
    return dataclasses.replace(logged, name=name, version=version)
