"""Models load without executing untrusted code: a signed digest of the artifact files, and skops with a reviewed
allow-list of types instead of pickle.

At training, :func:`signature_tags` hashes every file of the logged model directory (path and content) and signs
the digest with HMAC-SHA256 under ``MLPIPELINE_MODEL_SIGNING_KEY``; the train stage stores both as tags on the
MLflow run. Before any model is deserialized, :func:`load_verified_model` refuses a model saved with
pickle/cloudpickle (whatever ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` says: our loader never unpickles), recomputes
the digest over the downloaded files, checks the signature with ``hmac.compare_digest``, and only then loads the
skops file with :data:`TRUSTED_TYPES` (never the list the artifact itself declares). Whoever can write to MLflow
can change artifacts and tags, but cannot sign them without the key, which only the workers and the model server
hold.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

SIGNING_KEY_ENV = "MLPIPELINE_MODEL_SIGNING_KEY"
# Shorter keys are refused rather than silently weak (e.g. `openssl rand -hex 32` gives 64 characters).
MIN_KEY_LENGTH = 32
DIGEST_TAG = "model_sha256"
SIGNATURE_TAG = "model_signature"
# Versioned domain separation: a signature made for something else with the same key never verifies a model.
_SIGNED_PREFIX = b"mlpipeline-model-v1\n"

# The types beyond skops' own defaults (builtins, numpy arrays, scikit-learn estimators) that our models contain,
# as `skops.io.get_untrusted_types` reports them for each model type the train stage builds (random_forest,
# hist_gradient_boosting, logistic_regression). Each was reviewed: skops rebuilds it from data, none runs code
# of the artifact's choosing. Anything else in a model file is refused. Review a new entry before adding it.
TRUSTED_TYPES: tuple[str, ...] = (
    # Our date step (mlpipeline.features, shipped with every model): a list of column names as its only state.
    "mlpipeline.features.DateParts",
    # Our categorical step (same file): column names, the sorted training categories (object arrays of text) and
    # one integer code per column; its transform is hash look-ups and an indicator matrix.
    "mlpipeline.features.CategoryOneHot",
    # Our numeric imputer (same file): column names and one float median per column.
    "mlpipeline.features.MedianImputer",
    # Our feature matrix step (same file): column-name lists, a flag, a fitted MedianImputer and CategoryOneHot
    # (the two entries above) and float arrays (means, scales); its transform is numpy arithmetic into one matrix.
    "mlpipeline.features.FeatureMatrix",
    # HistGradientBoosting's fitted trees: numpy node arrays in a plain scikit-learn class.
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # RandomForest's fitted trees: scikit-learn's Cython tree, rebuilt from its node arrays.
    "sklearn.tree._tree.Tree",
    # dtype objects that encoders and imputers keep: a dtype, no behaviour.
    "numpy.dtype",
    # The numeric imputer's strategy in models trained before MedianImputer (SimpleImputer(strategy=np.median)): a
    # reference to the function, not a call. Kept so those registered models still load.
    "numpy.median",
)
SKOPS_FORMAT = "skops"


class IntegrityError(RuntimeError):
    """A model was refused before deserialization (unsafe format, missing or wrong signature, changed files,
    untrusted types), or models cannot be signed/verified (no key). Retrying will not help."""


def signing_key() -> bytes:
    """The HMAC key from the environment; there is no default key."""
    key = os.environ.get(SIGNING_KEY_ENV, "")
    if not key:
        raise IntegrityError(
            f"{SIGNING_KEY_ENV} is not set: models are signed at training and verified before every load, and "
            "there is no default key. Set it (the same secret) for the workers and the model server."
        )
    if len(key) < MIN_KEY_LENGTH:
        raise IntegrityError(f"{SIGNING_KEY_ENV} is too short: use at least {MIN_KEY_LENGTH} random characters")
    return key.encode()


def _signed_file(relative: PurePosixPath) -> bool:
    # Not part of the model: what MLflow (registered_model_meta) and Python (__pycache__) write into a local artifact
    # store when something else loads the model from it in place. Our loader reads neither: skops imports
    # mlpipeline.features from the installed package, never from the model's shipped code.
    return relative.as_posix() != "registered_model_meta" and "__pycache__" not in relative.parts


def artifact_digest(directory: str | Path) -> str:
    """sha256 over every file below ``directory`` (but the two above): its relative path and its content, in path
    order, each length-prefixed so no two different directories hash alike."""
    root = Path(directory)
    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for path in root.rglob("*"):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and _signed_file(relative):
            files.append((relative.as_posix(), path))
    for relative, path in sorted(files):
        name = relative.encode()
        digest.update(len(name).to_bytes(8, "big") + name + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sign(digest: str) -> str:
    return hmac.new(signing_key(), _SIGNED_PREFIX + digest.encode(), hashlib.sha256).hexdigest()


def signature_tags(directory: str | Path) -> dict[str, str]:
    """The digest of a logged model's files and its signature, as run tags."""
    digest = artifact_digest(directory)
    return {DIGEST_TAG: digest, SIGNATURE_TAG: sign(digest)}


def verify(directory: str | Path, tags: Mapping[str, str], what: str) -> None:
    """Raise IntegrityError unless the signed digest in ``tags`` is that of the files in ``directory``."""
    recorded, signature = tags.get(DIGEST_TAG), tags.get(SIGNATURE_TAG)
    if not recorded or not signature:
        raise IntegrityError(
            f"{what} has no signed digest ({DIGEST_TAG}/{SIGNATURE_TAG} tags of its training run): refused. "
            "Only models logged by the train stage load."
        )
    if not hmac.compare_digest(sign(recorded), signature):
        raise IntegrityError(
            f"{what}: the signature of its recorded digest is wrong (forged or made with another key): refused"
        )
    actual = artifact_digest(directory)
    if not hmac.compare_digest(actual, recorded):
        raise IntegrityError(
            f"{what}: checksum mismatch, its files changed after they were signed (sha256 {actual}, signed "
            f"{recorded}): refused"
        )


def sklearn_flavor(directory: str | Path, what: str) -> dict[str, Any]:
    """The sklearn flavor configuration of the MLmodel file (read as plain YAML: no code runs)."""
    try:
        meta = yaml.safe_load((Path(directory) / "MLmodel").read_text())
        return dict(meta["flavors"]["sklearn"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{what} is not a scikit-learn MLflow model ({exc!r}): refused") from exc


def refuse_unsafe_format(flavor: Mapping[str, Any], what: str) -> None:
    # MLflow's own default for models that do not say: pickle.
    serialization = flavor.get("serialization_format", "pickle")
    if serialization != SKOPS_FORMAT:
        raise IntegrityError(
            f"{what} was saved with {serialization}; loading it could execute arbitrary code, so it is refused "
            "(models load only from skops with the reviewed trusted types). Re-train it with this version of the "
            "pipeline; if it is the champion, delete or re-point the alias so the next run can replace it."
        )


def load_verified_model(directory: str | Path, tags: Mapping[str, str], what: str) -> Any:
    """Deserialize the downloaded model in ``directory`` after every check passed; ``tags`` are its training
    run's tags (where the signed digest is)."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    root = Path(directory).resolve()
    flavor = sklearn_flavor(root, what)
    refuse_unsafe_format(flavor, what)
    verify(root, tags, what)
    model_file = (root / str(flavor.get("pickled_model", ""))).resolve()
    if not model_file.is_file() or not model_file.is_relative_to(root):
        raise IntegrityError(f"{what}: its model file {flavor.get('pickled_model')!r} is missing: refused")
    try:
        return skops.io.load(model_file, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise IntegrityError(f"{what} contains types outside the reviewed trusted list ({exc}): refused") from exc
