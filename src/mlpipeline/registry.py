"""Small helpers around MLflow shared by train, validate, deploy and monitor."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlpipeline import integrity
from mlpipeline.config import PipelineConfig

# Quiet MLflow's per-call environment probing and its progress bars in task logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def use_tracking(config: PipelineConfig) -> MlflowClient:
    """Point the (process-global) fluent API at the configured server and return a client for it."""
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    mlflow.set_registry_uri(config.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=config.mlflow_tracking_uri, registry_uri=config.mlflow_tracking_uri)


# The experiment's kind, as MLflow 3's UI names it: a "custom model development" experiment opens on its training
# runs, not on the generative-AI overview. MLflow 3.17.2's UI reads this tag only with its workflow switch turned
# off (it is on in that release): there a link's ``?workflowType=machine_learning`` (or the browser's last choice of
# "Model training" in the sidebar) decides, checked with chromium against a 3.17.2 server; the tag still says what
# the experiment is, for the UIs and tools that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Return the experiment id, creating it (with the configured artifact location) if needed; either way it is
    marked a model-training experiment (``EXPERIMENT_KIND_TAG``), unless someone chose another kind."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND}
            )
        except MlflowException:
            # Another task created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # created by an older version of the pipeline, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
    return experiment.experiment_id


def log_run_artifact(config: PipelineConfig, run_id: str, local_path: Path, artifact_path: str) -> str:
    """Log the file ``local_path`` to the MLflow run ``run_id`` (finished or not) under ``artifact_path``; logging
    the same file again replaces it. Returns the artifact's URI."""
    client = use_tracking(config)
    client.log_artifact(run_id, str(local_path), artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}/{local_path.name}"


def champion_version(client: MlflowClient, config: PipelineConfig) -> ModelVersion | None:
    """The version the champion alias points at, or None when there is no champion (yet)."""
    try:
        return client.get_model_version_by_alias(config.registered_model_name, config.champion_alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


# --- What a logged model carries, logging it signed, and loading it only after verification ---------------------

# Distributions whose code the saved pipeline runs: the model flavour (scikit-learn, with DateParts needing
# pandas) and the serialization format (skops). Their dependencies are pinned too (see model_requirements).
MODEL_RUNTIME_DISTRIBUTIONS: tuple[str, ...] = ("scikit-learn", "pandas", "skops")
# The modules of this package the model file refers to by name; shipped with the model as code_paths.
MODEL_CODE_MODULES: tuple[str, ...] = ("features.py",)
_BUNDLED_INIT = '''"""The part of mlpipeline {version} that a logged model needs to load: mlpipeline.features.

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
    """A temporary minimal ``mlpipeline`` package (``__init__.py`` + the modules the model file names), as
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


def log_sklearn_model(
    pipeline: Any, *, signature: ModelSignature, input_example: Any, name: str = "model"
) -> ModelInfo:
    """Log ``pipeline`` to the active MLflow run, then sign it: the one way models are logged.

    skops with the reviewed trusted types (never pickle), the mlpipeline code it names (DateParts) and pinned
    requirements, so it stands alone; then the digest of its stored files and the HMAC of it become tags of the
    run (integrity.signature_tags). Register it only after this returns: unsigned models never load.
    """
    integrity.signing_key()  # no key: refuse before logging anything
    with model_code_paths() as code_paths, warnings.catch_warnings():
        # skops finds each type's module by probing every imported module's attributes; in an Airflow worker that
        # touches Airflow's deprecated aliases, each of which warns (~900 lines per model, none about the model).
        warnings.filterwarnings("ignore", message=r"The `airflow\..*` attribute is deprecated")
        info = mlflow.sklearn.log_model(
            pipeline,
            name=name,
            signature=signature,
            input_example=input_example,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=list(integrity.TRUSTED_TYPES),
            code_paths=code_paths,
            pip_requirements=model_requirements(),
        )
    client = MlflowClient()  # the fluent API's tracking URI, where the model was just logged
    stored = client.get_logged_model(info.model_id).artifact_location
    with tempfile.TemporaryDirectory(prefix="mlpipeline-sign-") as tmp:
        # Exactly the stored files, as every loader downloads them (a models:/ download adds a metadata file).
        local = mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=tmp)
        tags = integrity.signature_tags(local)
    for key, value in tags.items():
        client.set_tag(info.run_id, key, value)
    return info


def load_sklearn_model(model_uri: str, *, tracking_uri: str | None = None) -> Any:
    """Download the model's stored files, refuse pickle formats, verify the signed digest of its training run,
    and only then load it with skops and the reviewed trusted types (integrity.load_verified_model).

    Raises IntegrityError for a refused model. ``model_uri``: ``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``models:/<model id>`` or ``runs:/<run id>/<path>``; anything else (a local
    directory) has no training run to read a signature from, so it is refused. MLflow's own loader is never
    used: it would trust the type list the artifact declares, and it leaves the model's code on ``sys.path``.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    location, run_id, what = _stored_model(client, model_uri)
    tags = client.get_run(run_id).data.tags if run_id else {}
    with tempfile.TemporaryDirectory(prefix="mlpipeline-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=tracking_uri)
        return integrity.load_verified_model(local, tags, what)


def _stored_model(client: MlflowClient, model_uri: str) -> tuple[str, str | None, str]:
    """(where the model's files are stored, the run that logged and signed them, a name for messages)."""
    if model_uri.startswith("runs:/"):
        return model_uri, model_uri.removeprefix("runs:/").split("/", 1)[0], f"model {model_uri}"
    if not model_uri.startswith("models:/"):
        return model_uri, None, f"model {model_uri}"
    reference = model_uri.removeprefix("models:/")
    if "@" in reference:
        version = client.get_model_version_by_alias(*reference.split("@", 1))
    elif "/" in reference:
        version = client.get_model_version(*reference.rsplit("/", 1))
    else:
        logged = client.get_logged_model(reference)
        return logged.artifact_location, logged.source_run_id, f"model {reference}"
    where = client.get_model_version_download_uri(version.name, version.version)
    return where, version.run_id or None, f"model v{version.version} of {version.name}"


# --- Debris of killed attempts, and retiring old versions -------------------------------------------------------

ORPHANED_TAG = "orphaned"
# Tags deploy writes on a version: when it went live, and which version it replaced.
DEPLOYED_AT_TAG = "deployed_at"
PREVIOUS_CHAMPION_TAG = "previous_champion"


def filter_literal(value: str) -> str:
    """A string literal for an MLflow search filter (which has no escape for a quote inside a literal)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search for a tag value holding both quote characters: {value[:100]!r}")


def end_orphan_runs(client: MlflowClient, experiment_id: str, match_tags: dict[str, str]) -> list[str]:
    """Mark FAILED, tagged ``orphaned=true``, the runs of the experiment that carry all of ``match_tags`` and are
    still RUNNING: what an attempt killed mid-way left behind (SIGKILL ends no run). Returns their run ids.

    Call it before the attempt that replaces them starts its own run, with tags that name one attempt's work
    (e.g. the pipeline run and the candidate), so the runs of other, live tasks never match.
    """
    if not match_tags:
        raise ValueError("match_tags must name the attempt's work: without them every running run would match")
    clauses = ["attributes.status = 'RUNNING'"]
    for key, value in match_tags.items():
        if "`" in key:
            raise ValueError(f"tag key {key[:100]!r} contains a backtick")
        clauses.append(f"tags.`{key}` = {filter_literal(str(value))}")
    ended = []
    for run in client.search_runs([experiment_id], filter_string=" and ".join(clauses), max_results=1000):
        client.set_tag(run.info.run_id, ORPHANED_TAG, "true")
        client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    return ended


def protected_versions(client: MlflowClient, model_name: str, champion_alias: str) -> dict[str, str]:
    """Versions retention must keep, with the reason: every version an alias points at, the champion's recorded
    predecessor, and the version that was champion before it (the newest other one deploy stamped), in case a
    deploy died before recording its predecessor."""
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return {}
        raise
    protected = {str(version): f"alias {alias!r}" for alias, version in aliases.items()}
    champion = aliases.get(champion_alias)
    if champion is None:
        return protected
    recorded = client.get_model_version(model_name, str(champion)).tags.get(PREVIOUS_CHAMPION_TAG)
    if recorded:
        protected.setdefault(recorded, "the champion's predecessor")
    deployed = [
        (v.tags[DEPLOYED_AT_TAG], int(v.version))
        for v in all_versions(client, model_name)
        if v.tags.get(DEPLOYED_AT_TAG) and str(v.version) != str(champion)
    ]
    if deployed:
        protected.setdefault(str(max(deployed)[1]), "the previous champion")
    return protected


def all_versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    """Every version of the registered model, newest first (following pages)."""
    versions: list[ModelVersion] = []
    page_token = None
    while True:
        page = client.search_model_versions(
            f"name = {filter_literal(model_name)}", max_results=1000, page_token=page_token
        )
        versions.extend(page)
        page_token = page.token
        if not page_token:
            return sorted(versions, key=lambda v: int(v.version), reverse=True)


# --- Which model is which: "the same training" and "the same model", as tags on registered versions -----------

DATA_SHA256_TAG = "data_sha256"
MODEL_FINGERPRINT_TAG = "model_fingerprint"
TRAINING_FINGERPRINT_TAG = "training_fingerprint"
CODE_VERSION_TAG = "code_version"
# What deploy did with a version: deploying (alias about to move), deployed, rolled_back, rejected; and why.
DEPLOY_STATUS_TAG = "deploy_status"
DEPLOY_NOTE_TAG = "deploy_note"

# Settings that change neither a trained model nor how it is judged: where things live, who hears about it, what
# happens after deployment. The crawl's settings count through the data's sha256. Every other setting counts,
# including any added later: an unknown knob costs a retrain, never a wrong "nothing changed".
MODEL_NEUTRAL_PREFIXES = ("crawl_", "mlflow_", "serving_", "drift_", "monitor_", "retention_")
MODEL_NEUTRAL_SETTINGS = frozenset(
    {"data_dir", "registered_model_name", "champion_alias", "smoke_test_rows", "notification_email", "email_from"}
    | {"notify_unchanged"}
)
# Settings that judge a model rather than shape it: part of "the same training", not of "the same model".
JUDGING_SETTINGS = frozenset({"validation_metric", "metric_threshold", "champion_tolerance", "champion_margin"})
# Where a model's behaviour is coded (relative to this package) and the libraries it is computed with.
MODEL_SOURCES = ("features.py", "stages/train.py", "stages/evaluation.py", "stages/etl", "stages/schema.py", "tasks.py")
MODEL_LIBRARIES = ("scikit-learn", "numpy", "pandas", "pyarrow")


def code_version() -> str:
    """``<package version>+<digest>`` of the code and library versions that turn data into a model: an edit to
    the ETL, the training or the model's transformers, or another scikit-learn, gives a new value."""
    from mlpipeline import __version__

    package = Path(__file__).parent
    digest = hashlib.sha256()
    for source in MODEL_SOURCES:
        path = package / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    for name in MODEL_LIBRARIES:
        digest.update(f"{name}=={importlib.metadata.version(name)}\0".encode())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def _model_settings(config: PipelineConfig, *, judging: bool) -> dict[str, Any]:
    """The settings that shape a model (and, if ``judging``, those that judge it); candidates apart."""
    settings = config.model_dump(mode="json", exclude={"declared"})
    # As the settings said, before the ETL filled in the task, schema and metric from the data: a run is "the same
    # training" as the champion's when its settings are, and the data (by sha256) decides the rest the same way.
    settings.update(config.declared or {})
    return {
        name: value
        for name, value in settings.items()
        if name not in MODEL_NEUTRAL_SETTINGS
        and not name.startswith(MODEL_NEUTRAL_PREFIXES)
        and name not in ("ml_model_type", "hyperparameters", "candidates")  # as training_candidates() gives them
        and (judging or name not in JUDGING_SETTINGS)
    }


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def training_fingerprint(config: PipelineConfig) -> str:
    """Equal for two runs (on the same data) that would train the same candidates, in the same order, with the
    same code and judge them the same way. Names are left out: they label a model, they do not shape it."""
    candidates = [{"type": c.ml_model_type, "hp": c.hyperparameters} for c in config.training_candidates()]
    return _digest(
        {"code": code_version(), "settings": _model_settings(config, judging=True), "candidates": candidates}
    )


def model_fingerprint(config: PipelineConfig, candidate_name: str) -> str:
    """Equal for two trainings (on the same data) of the same model: candidate type and parameters, the
    settings that shape it, the code."""
    candidate = next((c for c in config.training_candidates() if c.name == candidate_name), None)
    if candidate is None:
        raise ValueError(f"no candidate named {candidate_name!r} in this config")
    spec = {"type": candidate.ml_model_type, "hp": candidate.hyperparameters}
    return _digest({"code": code_version(), "settings": _model_settings(config, judging=False), "candidate": spec})


def find_same_model(client: MlflowClient, model_name: str, data_sha256: str, fingerprint: str) -> list[ModelVersion]:
    """Registered versions of the model trained on ``data_sha256`` with ``fingerprint`` (see model_fingerprint)."""
    return list(
        client.search_model_versions(
            f"name = {filter_literal(model_name)} and tags.{DATA_SHA256_TAG} = {filter_literal(data_sha256)}"
            f" and tags.{MODEL_FINGERPRINT_TAG} = {filter_literal(fingerprint)}"
        )
    )
