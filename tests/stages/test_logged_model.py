"""The model the train stage logs stands alone: it carries the mlpipeline code its skops file names and pins the
packages it runs on (skops included), loads where this repository is unknown (with the trusted types it declares),
and loading it never disturbs a process that imports mlpipeline. Models pickled the old way are refused."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.sklearn
import mlflow.utils.model_utils
import numpy as np
import pandas as pd
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mlpipeline
import mlpipeline.features
from mlpipeline.integrity import TRUSTED_TYPES, IntegrityError
from mlpipeline.registry import load_sklearn_model
from mlpipeline.stages.etl import EtlResult
from mlpipeline.stages.train import TrainResult, build_pipeline, load_holdout, train
from tests.pipeline_data import Workspace, workspace

SRC = Path(mlpipeline.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return workspace(tmp_path_factory.mktemp("logged_model"))


@pytest.fixture(scope="module")
def processed(ws: Workspace) -> EtlResult:
    return ws.processed("data1", rows=800)


@pytest.fixture(scope="module")
def trained(ws: Workspace, processed: EtlResult) -> TrainResult:
    return train(ws.config(), run="standalone", processed_data_path=processed.data_path, data_sha256="x")


@pytest.fixture(scope="module")
def model_dir(ws: Workspace, trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The logged model as someone who only has the registry would get it: its artifact directory."""
    target = tmp_path_factory.mktemp("downloaded")
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=trained.model_uri, dst_path=str(target), tracking_uri=ws.tracking_uri
        )
    )


def _holdout_features(ws: Workspace, trained: TrainResult) -> pd.DataFrame:
    features, _ = load_holdout(trained.holdout_path, ws.config().dataset_schema)
    return features


# Runs in an isolated interpreter (-I: no PYTHONPATH, no user site, no script dir on sys.path; -B: the model
# directory stays as downloaded) whose sys.path then
# loses the editable install's src/ entry: the only mlpipeline it can find is the one shipped with the model.
_FRESH_LOAD = r"""
import json, os, sys
src, model_dir, features_path = sys.argv[1:4]
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != os.path.realpath(src)]
import importlib.util
assert importlib.util.find_spec("mlpipeline") is None, "this interpreter must not see the project"
import mlflow.pyfunc, mlflow.sklearn, pandas as pd
features = pd.read_parquet(features_path)
served = mlflow.pyfunc.load_model(model_dir).predict(features)  # what `mlflow models serve` does
model = mlflow.sklearn.load_model(model_dir)
import mlpipeline, mlpipeline.features
print(json.dumps({
    "mlpipeline": mlpipeline.__file__,
    "features": mlpipeline.features.__file__,
    "date_parts_module": type(model.steps[0][1]).__module__,
    "served": [int(v) for v in served],
    "probabilities": model.predict_proba(features)[:, 1].tolist(),
}))
"""


def test_a_logged_model_loads_and_predicts_where_the_project_is_not_installed(
    ws: Workspace, trained: TrainResult, model_dir: Path, tmp_path: Path
) -> None:
    features = _holdout_features(ws, trained)
    features.to_parquet(tmp_path / "features.parquet")
    # MLflow's own loader, as a consumer of the registry uses it: with its default, which lets it load the skops file
    # with the trusted types the model declares (false refuses every format, skops included).
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTHON") and name != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    }
    completed = subprocess.run(
        [sys.executable, "-I", "-B", "-c", _FRESH_LOAD, str(SRC), str(model_dir), str(tmp_path / "features.parquet")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    seen = json.loads(completed.stdout.strip().splitlines()[-1])

    code = (model_dir / "code" / "mlpipeline").resolve()
    assert Path(seen["mlpipeline"]).resolve() == code / "__init__.py"
    assert Path(seen["features"]).resolve() == code / "features.py"
    assert seen["date_parts_module"] == "mlpipeline.features", "the class path registered models rely on"
    expected = load_sklearn_model(trained.model_uri, tracking_uri=ws.tracking_uri)
    assert seen["served"] == expected.predict(features).tolist()
    assert np.array_equal(seen["probabilities"], expected.predict_proba(features)[:, 1])


def test_the_shipped_code_is_a_minimal_mlpipeline_whose_features_module_is_the_library_file(model_dir: Path) -> None:
    code = model_dir / "code"
    assert sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file()) == [
        "mlpipeline/__init__.py",
        "mlpipeline/features.py",
    ]
    assert (code / "mlpipeline" / "features.py").read_bytes() == Path(mlpipeline.features.__file__).read_bytes()
    flavors = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]
    assert flavors["sklearn"]["code"] == flavors["python_function"]["code"] == "code"
    assert flavors["sklearn"]["serialization_format"] == "skops"
    assert flavors["sklearn"]["skops_trusted_types"] == list(TRUSTED_TYPES), "what a standalone MLflow load trusts"


def _pins(model_dir: Path) -> dict[str, str]:
    lines = [line.strip() for line in (model_dir / "requirements.txt").read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    for requirement in requirements:
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not pinned: {requirement}"
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirements}


def test_the_logged_requirements_pin_the_installed_packages_and_never_a_bare_mlpipeline(model_dir: Path) -> None:
    pins = _pins(model_dir)
    assert "mlpipeline" not in pins, "that name on PyPI is an unrelated package"
    assert {"scikit-learn", "numpy", "pandas", "scipy", "skops", "mlflow"} <= set(pins)
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"{name} is pinned to {version}, not the installed one"
    python = yaml.safe_load((model_dir / "python_env.yaml").read_text())["python"]
    assert python == ".".join(map(str, sys.version_info[:3]))


def _skops_modules(path: Path) -> set[str]:
    """Every module the skops file's schema names (read as JSON: nothing is loaded)."""
    modules: set[str] = set()
    pending: list[Any] = [json.loads(zipfile.ZipFile(path).read("schema.json"))]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            modules.update([node["__module__"]] if "__module__" in node else [])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return modules


def test_every_module_the_model_file_names_is_shipped_or_pinned(model_dir: Path) -> None:
    """Nothing the loader imports is left to chance: stdlib, the shipped code, or a pinned distribution."""
    pins = _pins(model_dir)
    distributions = importlib.metadata.packages_distributions()
    modules = _skops_modules(model_dir / "model.skops")
    assert "mlpipeline.features" in modules
    for module in modules:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names:
            continue
        if top == "mlpipeline":
            assert (model_dir / "code" / Path(*module.split("."))).with_suffix(".py").is_file(), module
            continue
        providers = {canonicalize_name(d) for d in distributions.get(top, [])}
        assert providers and providers <= set(pins), f"{module} comes from {providers}, not pinned in {pins}"


def _our_modules() -> dict[str, Any]:
    return {name: module for name, module in sys.modules.items() if name.split(".")[0] == "mlpipeline"}


def test_loading_never_shadows_or_evicts_the_real_package(ws: Workspace, trained: TrainResult) -> None:
    import mlpipeline.stages.train as train_module

    modules, package_file, path = _our_modules(), mlpipeline.__file__, list(sys.path)
    model = load_sklearn_model(trained.model_uri)
    assert _our_modules() == modules and sys.modules["mlpipeline.stages.train"] is train_module
    assert mlpipeline.__file__ == package_file
    assert type(model.steps[0][1]) is mlpipeline.features.DateParts, "the real class, not the shipped copy's"
    assert sys.path == path, "no code directory of a (deleted) download left on sys.path"

    # Plain MLflow loading (as `mlflow models serve` does) leaves the code directory on sys.path, yet the real
    # package stays: its submodules, even ones not imported yet, still resolve from src/.
    plain = mlflow.sklearn.load_model(trained.model_uri)
    try:
        assert _our_modules() == modules and mlpipeline.__file__ == package_file
        assert type(plain.steps[0][1]) is mlpipeline.features.DateParts
        spec = importlib.util.find_spec("mlpipeline.dev.mailcatcher")
        assert spec is not None and Path(spec.origin).resolve().is_relative_to(SRC)
    finally:
        sys.path[:] = path
    features = _holdout_features(ws, trained)
    assert np.array_equal(model.predict_proba(features), plain.predict_proba(features))


def test_loading_never_uses_mlflows_code_path_import_that_evicts_modules(
    ws: Workspace, trained: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some MLflow versions drop cached modules named like the shipped files; the verifying loader never puts the
    model's code on sys.path, so ours stay as they were."""

    def prepend_and_evict(code_path: str) -> None:
        sys.path.insert(0, code_path)
        for file in Path(code_path).rglob("*.py"):
            dotted = ".".join(file.relative_to(code_path).with_suffix("").parts).removesuffix(".__init__")
            sys.modules.pop(dotted, None)
            sys.modules.pop(file.stem, None)

    features = _holdout_features(ws, trained)
    expected = load_sklearn_model(trained.model_uri).predict_proba(features)
    monkeypatch.setattr(mlflow.utils.model_utils, "_add_code_to_system_path", prepend_and_evict)
    modules, package_file, path = _our_modules(), mlpipeline.__file__, list(sys.path)
    model = load_sklearn_model(trained.model_uri)
    assert _our_modules() == modules and sys.modules["mlpipeline"].__file__ == package_file
    assert sys.path == path
    assert np.array_equal(model.predict_proba(features), expected)


def test_a_model_pickled_the_old_way_is_refused_before_anything_is_unpickled(
    ws: Workspace, processed: EtlResult, tmp_path: Path
) -> None:
    """Versions registered before models were saved with skops: cloudpickle files can run any code when loaded, so
    the loader refuses them by their MLmodel alone, saying so, and never opens the pickle."""
    schema = ws.config().dataset_schema
    features, target = load_holdout(processed.data_path, schema)
    pipeline = build_pipeline(schema, "logistic_regression", {}, 0).fit(features, target)
    old = tmp_path / "old_model"
    mlflow.sklearn.save_model(
        pipeline, str(old), serialization_format="cloudpickle", pip_requirements=["scikit-learn", "mlpipeline"]
    )
    assert yaml.safe_load((old / "MLmodel").read_text())["flavors"]["sklearn"]["serialization_format"] == "cloudpickle"
    (old / "model.pkl").write_bytes(b"not a pickle: opening it would fail differently")

    path = list(sys.path)
    with pytest.raises(IntegrityError, match=r"was saved with cloudpickle; loading it could execute .* refused"):
        load_sklearn_model(str(old))
    assert sys.path == path
