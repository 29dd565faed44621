"""What a logged model's requirements say: exact pins of its runtime stack, closed over dependencies."""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlpipeline.registry import MODEL_RUNTIME_DISTRIBUTIONS, model_requirements


def test_model_requirements_pin_the_runtime_stack_and_its_plain_dependencies_only() -> None:
    pins = {canonicalize_name(r.name): r for r in map(Requirement, model_requirements())}
    assert "mlpipeline" not in pins
    for name, requirement in pins.items():
        assert str(requirement.specifier) == f"=={importlib.metadata.version(name)}"
    for distribution in MODEL_RUNTIME_DISTRIBUTIONS:
        assert canonicalize_name(distribution) in pins
        for line in importlib.metadata.requires(distribution) or []:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                assert canonicalize_name(dependency.name) in pins, line
    # Closed over plain dependencies (scikit-learn -> scipy, joblib, ...), not extras (pandas[test], pandas[parquet]).
    assert {"scipy", "numpy", "joblib", "threadpoolctl"} <= set(pins)
    assert not {"pytest", "hypothesis", "pyarrow"} & set(pins)


def test_logging_a_model_in_an_airflow_worker_warns_nothing_about_airflow(tmp_path: Path) -> None:
    # skops probes every imported module for each type it saves; Airflow's deprecated aliases warn when probed.
    import airflow.utils.operator_resources  # noqa: F401  (one of them, as a worker has it imported)
    import mlflow
    from mlflow.models import infer_signature

    from mlpipeline.registry import log_sklearn_model
    from tests.model_factory import FEATURES, TARGET, Registry, build_pipeline, make_frame

    registry = Registry(tmp_path)
    data = make_frame(200)
    model = build_pipeline(n_estimators=5, max_depth=3, seed=0).fit(data[FEATURES], data[TARGET])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signature = infer_signature(data[FEATURES], model.predict(data[FEATURES]))
        with mlflow.start_run(experiment_id=registry.experiment_id):
            log_sklearn_model(model, signature=signature, input_example=data[FEATURES].head(3))
    about_airflow = [str(w.message) for w in caught if "airflow" in str(w.message)]
    assert about_airflow == []
