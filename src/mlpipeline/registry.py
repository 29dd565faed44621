"""Small helpers around MLflow shared by train, validate, deploy and monitor."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlpipeline.config import PipelineConfig

# Quiet MLflow's per-call environment probing and its progress bars in task logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def use_tracking(config: PipelineConfig) -> MlflowClient:
    """Point the (process-global) fluent API at the configured server and return a client for it."""
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    mlflow.set_registry_uri(config.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=config.mlflow_tracking_uri, registry_uri=config.mlflow_tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Return the experiment id, creating it (with the configured artifact location) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another task created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def champion_version(client: MlflowClient, config: PipelineConfig) -> ModelVersion | None:
    """The version the champion alias points at, or None when there is no champion (yet)."""
    try:
        return client.get_model_version_by_alias(config.registered_model_name, config.champion_alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


# --- What a logged model carries, and loading it without disturbing the importing process -----------------------

# Distributions whose code the pickled pipeline runs: the model flavour (scikit-learn, with DateParts needing
# pandas) and the serialization format. Their dependencies are pinned too (see model_requirements).
MODEL_RUNTIME_DISTRIBUTIONS: tuple[str, ...] = ("scikit-learn", "pandas", "cloudpickle")
# The modules of this package the pickle refers to by name; shipped with the model as code_paths.
MODEL_CODE_MODULES: tuple[str, ...] = ("features.py",)
_BUNDLED_INIT = '''"""The part of mlpipeline {version} that a logged model needs to unpickle: mlpipeline.features.

Shipped with the model (MLflow code_paths) so it loads where this project is not installed; features.py is a
byte-identical copy of the library's. Where the real package is already imported, that one is used.
"""
'''


def model_requirements() -> list[str]:
    """``name==version`` for the model's runtime distributions and everything they depend on, as installed here,
    so the model's environment is the one it was trained and tested in. Never this project itself: its name on
    PyPI belongs to an unrelated package, and the code the model needs is shipped with it."""
    pins: dict[str, str] = {}
    pending = list(MODEL_RUNTIME_DISTRIBUTIONS)
    while pending:
        distribution = importlib.metadata.distribution(pending.pop())
        name = canonicalize_name(distribution.metadata["Name"])
        if name in pins:
            continue
        pins[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            # Only what a plain install pulls in: extras ("test", "excel", ...) and other platforms are left out.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


@contextmanager
def model_code_paths() -> Iterator[list[str]]:
    """A temporary minimal ``mlpipeline`` package (``__init__.py`` + the modules the pickle names), as
    ``code_paths`` for ``mlflow.<flavor>.log_model``."""
    from mlpipeline import __version__

    package = Path(__file__).parent
    with tempfile.TemporaryDirectory(prefix="mlpipeline-model-code-") as tmp:
        bundle = Path(tmp) / package.name
        bundle.mkdir()
        (bundle / "__init__.py").write_text(_BUNDLED_INIT.format(version=__version__))
        for module in MODEL_CODE_MODULES:
            shutil.copyfile(package / module, bundle / module)
        yield [str(bundle)]


def load_sklearn_model(model_uri: str) -> Any:
    """``mlflow.sklearn.load_model`` that leaves this process's imports as they were.

    MLflow prepends a model's code directory to ``sys.path`` (for good: a long-running server would collect one
    entry per load, pointing at deleted download directories) and some versions evict cached modules named like
    the shipped files. Unpickling resolves ``mlpipeline.features`` to the package already imported here (this
    module is part of it); afterwards ``sys.path`` and every ``mlpipeline`` module are put back as they were.
    """
    path_before = list(sys.path)
    ours_before = {name: module for name, module in sys.modules.items() if name.split(".")[0] == __package__}
    try:
        return mlflow.sklearn.load_model(model_uri)
    finally:
        # MLflow prepends: removing the first occurrence of each added entry keeps an older equal one in place.
        for entry in (Counter(sys.path) - Counter(path_before)).elements():
            sys.path.remove(entry)
        sys.modules.update(ours_before)
