"""Build, log and register small scikit-learn models the way the train/deploy stages do (test helper).

Independent of the train stage: it only follows the model contract (a sklearn ``Pipeline`` whose first step derives
date parts, then a ColumnTransformer with imputers/one-hot, then a classifier with ``predict_proba``; logged and
signed with ``mlpipeline.registry.log_sklearn_model`` (skops, the reviewed trusted types, the ``mlpipeline`` code
and pinned requirements, the signed digest as run tags), then registered, the ``champion`` alias set).
One registry (temp dir + sqlite) is shared by the whole test process because creating the MLflow database costs
seconds; test modules use distinct registered model names so they don't interfere.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import hashlib
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlpipeline.features import DateParts, date_part_columns
from mlpipeline.payload import json_rows
from mlpipeline.registry import log_sklearn_model

TARGET = "churned"
NUMERIC = ["monthly_charges"]
INTEGER = ["tenure_months", "support_tickets"]
CATEGORICAL = ["contract", "region"]
BOOLEAN = ["paperless_billing"]
DATE = ["signup_date"]
FEATURES = INTEGER + NUMERIC + CATEGORICAL + BOOLEAN + DATE
CONTRACTS = ["month-to-month", "one_year", "two_year"]
REGIONS = ["north", "south", "east", "west"]


def make_frame(n: int, seed: int = 0, *, shift: float = 0.0) -> pd.DataFrame:
    """Synthetic churn-like rows (features + 0/1 target). ``shift`` > 0 moves numeric and categorical features."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n) + round(30 * shift)
    tickets = rng.poisson(1.5 + 4 * shift, n)
    charges = rng.normal(70 + 40 * shift, 20, n).round(2)
    contract_p = np.array([0.5, 0.3, 0.2]) if shift == 0 else np.array([0.1, 0.2, 0.7])
    contract = rng.choice(CONTRACTS, n, p=contract_p)
    region = rng.choice(REGIONS, n)
    paperless = rng.random(n) < 0.6
    signup = np.datetime64("2018-01-01", "ns") + (rng.integers(0, 2000, n) + int(365 * shift)).astype("timedelta64[D]")
    logit = (
        -0.04 * tenure
        + 0.03 * (charges - 70)
        + 0.5 * tickets
        + np.where(contract == "month-to-month", 1.2, -0.8)
        + 0.3 * paperless
        - 0.5
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    frame = pd.DataFrame(
        {
            "tenure_months": tenure.astype(np.int64),
            "support_tickets": tickets.astype(np.int64),
            "monthly_charges": charges.astype(np.float64),
            "contract": contract.astype(object),
            "region": region.astype(object),
            "paperless_billing": paperless,
            "signup_date": signup.astype("datetime64[ns]"),
            TARGET: churned,
        }
    )
    # A few missing numbers, as in real data: the model must impute them.
    frame.loc[rng.random(n) < 0.03, "monthly_charges"] = np.nan
    return frame


def build_pipeline(
    *, n_estimators: int = 30, max_depth: int | None = 6, seed: int = 0, threshold: float | None = None
) -> Pipeline:
    """``threshold``: wrap the forest in a FixedThresholdClassifier (predict() is then not argmax of the proba)."""
    date_parts = [name for d in DATE for name in date_part_columns(d)]
    numeric = Pipeline([("impute", SimpleImputer(strategy="median"))])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    columns = ColumnTransformer(
        [
            ("num", numeric, INTEGER + NUMERIC + BOOLEAN + date_parts),
            ("cat", categorical, CATEGORICAL),
        ]
    )
    classifier: Any = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=1
    )
    if threshold is not None:
        classifier = FixedThresholdClassifier(classifier, threshold=threshold, response_method="predict_proba")
    return Pipeline([("dates", DateParts(list(DATE))), ("columns", columns), ("classifier", classifier)])


@dataclass(frozen=True)
class LoggedModel:
    name: str
    version: str
    run_id: str
    model_id: str
    source: str
    model: Pipeline
    metrics: dict[str, float]
    data_sha256: str
    trained_at: str
    artifact_dir: Path


class Registry:
    """A throw-away MLflow tracking store + model registry (sqlite) with a temp artifact root."""

    def __init__(self, root: Path) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.root = root
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        # The fluent logging API (mlflow.sklearn.log_model) only knows the process-global URI.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.experiment_id = self.client.create_experiment("training", artifact_location=str(root / "artifacts"))
        self._base: dict[int, LoggedModel] = {}

    def use(self) -> None:
        """Point the process-global fluent API here again: other tests (any stage's use_tracking) move it."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def log_model(
        self,
        name: str,
        *,
        seed: int = 0,
        n_estimators: int = 30,
        max_depth: int | None = 6,
        rows: int = 600,
        alias: str | None = "champion",
        threshold: float | None = None,
    ) -> LoggedModel:
        """Train on synthetic data, log like the train stage, register under ``name``, optionally set ``alias``."""
        import mlflow
        from mlflow.models import infer_signature

        self.use()
        data = make_frame(rows, seed=seed)
        train, test = data.iloc[: rows * 3 // 4], data.iloc[rows * 3 // 4 :]
        X, y = train[FEATURES], train[TARGET]
        model = build_pipeline(n_estimators=n_estimators, max_depth=max_depth, seed=seed, threshold=threshold)
        model.fit(X, y)
        proba = model.predict_proba(test[FEATURES])[:, 1]
        predicted = model.predict(test[FEATURES])
        metrics = {
            "accuracy": float(accuracy_score(test[TARGET], predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(test[TARGET], predicted)),
            "f1": float(f1_score(test[TARGET], predicted)),
            "roc_auc": float(roc_auc_score(test[TARGET], proba)),
        }
        data_sha256 = hashlib.sha256(pd.util.hash_pandas_object(data).values.tobytes()).hexdigest()
        trained_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with warnings.catch_warnings():
            # Integer-column hints are expected for this contract.
            warnings.simplefilter("ignore")
            signature = infer_signature(X, model.predict(X))
            with mlflow.start_run(experiment_id=self.experiment_id) as run:
                mlflow.log_metrics(metrics)
                mlflow.set_tags({"data_sha256": data_sha256, "trained_at": trained_at})
                info = log_sklearn_model(model, signature=signature, input_example=X.head(3))
            # Registered once signed, as the deploy stage does: a version never exists unsigned.
            version = str(mlflow.register_model(info.model_uri, name).version)
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, version)
        return LoggedModel(
            name=name,
            version=version,
            run_id=run.info.run_id,
            model_id=info.model_id,
            source=info.model_uri,
            model=model,
            metrics=metrics,
            data_sha256=data_sha256,
            trained_at=trained_at,
            artifact_dir=Path(self.client.get_model_version_download_uri(name, version)),
        )

    def base(self, seed: int) -> LoggedModel:
        """A model logged once per process (per seed); register it under other names with :meth:`register`."""
        if seed not in self._base:
            self._base[seed] = self.log_model(
                f"base-{seed}", seed=seed, n_estimators=20 + 10 * seed, max_depth=4 + seed, alias=None
            )
        return self._base[seed]

    def register(self, logged: LoggedModel, name: str, *, alias: str | None = "champion") -> LoggedModel:
        """A new version of ``name`` backed by an already logged model (as the deploy stage registers)."""
        from mlflow.exceptions import MlflowException

        self.use()  # MLflow resolves a models:/m-<id> source through the global URI
        with contextlib.suppress(MlflowException):  # already exists
            self.client.create_registered_model(name)
        created = self.client.create_model_version(
            name, source=logged.source, run_id=logged.run_id, model_id=logged.model_id
        )
        version = str(created.version)
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, version)
        return replace(logged, name=name, version=version)

    def set_alias(self, name: str, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def break_version(self, logged: LoggedModel) -> None:
        """Delete a version's artifacts (the registry entry stays): loading it must fail."""
        shutil.rmtree(logged.artifact_dir)


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry (created on first use, removed at exit)."""
    global _REGISTRY
    if _REGISTRY is None:
        root = Path(tempfile.mkdtemp(prefix="mlpipeline-registry-"))
        atexit.register(shutil.rmtree, root, True)
        _REGISTRY = Registry(root)
    return _REGISTRY


def rows_for_request(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready feature rows: dates as ISO strings, missing values as null."""
    return json_rows(frame[FEATURES])
