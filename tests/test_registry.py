"""What a logged model's requirements say: exact pins of its runtime stack, closed over dependencies."""

from __future__ import annotations

import importlib.metadata

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
