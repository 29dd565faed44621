"""integrity: the signed digest of a model directory, and loading only what is signed, skops and trusted."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import shutil
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from mlpipeline.config import default_schema
from mlpipeline.features import CategoryOneHot, DateParts, MedianImputer, date_part_columns
from mlpipeline.integrity import (
    DIGEST_TAG,
    SIGNATURE_TAG,
    SIGNING_KEY_ENV,
    TRUSTED_TYPES,
    IntegrityError,
    artifact_digest,
    load_verified_model,
    sign,
    signature_tags,
    verify,
)
from mlpipeline.registry import model_code_paths
from mlpipeline.stages.train import build_pipeline, features_and_target
from tests import model_factory as mf
from tests.pipeline_data import workspace


@pytest.fixture(scope="module")
def fitted_frame(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target as the train stage fits them: the bundled data through the real ETL."""
    ws = workspace(tmp_path_factory.mktemp("integrity"))
    return features_and_target(pd.read_parquet(ws.processed("d", rows=400).data_path), default_schema())


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model saved the way the train stage logs one: skops, the trusted types, the shipped code."""
    data = mf.make_frame(200)
    pipeline = mf.build_pipeline(n_estimators=5).fit(data[mf.FEATURES], data[mf.TARGET])
    with model_code_paths() as code_paths:
        mlflow.sklearn.save_model(
            pipeline,
            str(tmp_path / "model"),
            serialization_format="skops",
            skops_trusted_types=list(TRUSTED_TYPES),
            code_paths=code_paths,
            pip_requirements=["scikit-learn"],
        )
    return tmp_path / "model"


def test_the_digest_covers_paths_and_contents_and_is_stable(model_dir: Path, tmp_path: Path) -> None:
    digest = artifact_digest(model_dir)
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert artifact_digest(copy) == digest, "independent of where the directory is and of file creation order"
    (copy / "conda.yaml").rename(copy / "conda2.yaml")
    assert artifact_digest(copy) != digest, "a renamed file changes it"
    (copy / "conda2.yaml").rename(copy / "conda.yaml")
    (copy / "extra.txt").write_text("")
    assert artifact_digest(copy) != digest, "an added (even empty) file changes it"
    (copy / "extra.txt").unlink()
    with (copy / "model.skops").open("ab") as file:
        file.write(b"\0")
    assert artifact_digest(copy) != digest, "one more byte changes it"
    # Moving bytes between a file's name and its content cannot collide: every part is length-prefixed.
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "ab").write_bytes(b"c")
    (two / "a").write_bytes(b"bc")
    assert artifact_digest(one) != artifact_digest(two)


def test_files_other_tools_write_into_a_local_store_are_not_part_of_the_model(model_dir: Path) -> None:
    digest = artifact_digest(model_dir)
    (model_dir / "registered_model_meta").write_text("model_name: m\nmodel_version: '1'\n")
    (model_dir / "code" / "mlpipeline" / "__pycache__").mkdir()
    (model_dir / "code" / "mlpipeline" / "__pycache__" / "features.cpython-311.pyc").write_bytes(b"\0")
    assert artifact_digest(model_dir) == digest


def test_the_signature_is_an_hmac_of_the_digest_under_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "ab" * 32
    key = os.environ[SIGNING_KEY_ENV].encode()
    expected = hmac.new(key, b"mlpipeline-model-v1\n" + digest.encode(), hashlib.sha256).hexdigest()
    assert sign(digest) == expected
    monkeypatch.setenv(SIGNING_KEY_ENV, "another key, at least thirty-two characters long")
    assert sign(digest) != expected


def test_a_signed_model_loads_with_the_trusted_types_only(model_dir: Path) -> None:
    tags = signature_tags(model_dir)
    verify(model_dir, tags, "model v1")
    model = load_verified_model(model_dir, tags, "model v1")
    data = mf.make_frame(20, seed=1)
    assert model.predict_proba(data[mf.FEATURES]).shape == (20, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({SIGNATURE_TAG: None}, "has no signed digest"),
        ({DIGEST_TAG: None}, "has no signed digest"),
        ({SIGNATURE_TAG: "0" * 64}, "signature of its recorded digest is wrong"),
        ({DIGEST_TAG: "0" * 64}, "signature of its recorded digest is wrong"),
    ],
)
def test_a_missing_or_wrong_signature_is_refused(model_dir: Path, change: dict, message: str) -> None:
    tags = {**signature_tags(model_dir), **change}
    tags = {key: value for key, value in tags.items() if value is not None}
    with pytest.raises(IntegrityError, match=f"model v7.*{message}.*refused"):
        load_verified_model(model_dir, tags, "model v7")


def test_a_signature_made_with_another_key_is_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "an attacker's key that is long enough to use")
    forged = signature_tags(model_dir)
    monkeypatch.undo()
    with pytest.raises(IntegrityError, match="forged or made with another key"):
        load_verified_model(model_dir, forged, "model v2")


def test_files_changed_after_signing_are_refused_as_a_checksum_mismatch(model_dir: Path) -> None:
    tags = signature_tags(model_dir)
    data = mf.make_frame(100, seed=5)
    other = mf.build_pipeline(n_estimators=3, seed=5).fit(data[mf.FEATURES], data[mf.TARGET])
    skops.io.dump(other, model_dir / "model.skops")  # a valid model, but not the one that was signed
    with pytest.raises(IntegrityError, match="checksum mismatch, its files changed after they were signed"):
        load_verified_model(model_dir, tags, "model v3")


def test_without_the_key_nothing_is_verified(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tags = signature_tags(model_dir)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    with pytest.raises(IntegrityError, match=f"{SIGNING_KEY_ENV} is not set"):
        load_verified_model(model_dir, tags, "model v1")


def test_a_signed_skops_file_with_an_untrusted_type_is_refused_before_it_is_built(model_dir: Path) -> None:
    """The allow-list is the last line: even a model signed by a tricked trainer loads only reviewed types."""
    skops.io.dump(FunctionTransformer(func=os.system), model_dir / "model.skops")
    tags = signature_tags(model_dir)
    with pytest.raises(IntegrityError, match=r"outside the reviewed trusted list .*posix.system.*refused"):
        load_verified_model(model_dir, tags, "model v4")


def test_the_list_the_artifact_declares_is_not_the_one_that_is_trusted(model_dir: Path) -> None:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = ["posix.system"]
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    skops.io.dump(FunctionTransformer(func=os.system), model_dir / "model.skops")
    with pytest.raises(IntegrityError, match=r"posix\.system"):
        load_verified_model(model_dir, signature_tags(model_dir), "model v5")


@pytest.mark.parametrize("serialization", ["cloudpickle", "pickle", None])
def test_pickle_formats_are_refused_by_the_mlmodel_alone(
    model_dir: Path, tmp_path: Path, serialization: str | None
) -> None:
    marker = tmp_path / "pwned"
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["sklearn"]
    flavor.pop("serialization_format")  # None: an old model that does not say, i.e. MLflow's default, pickle
    if serialization:
        flavor["serialization_format"] = serialization
    flavor["pickled_model"] = "model.pkl"
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (model_dir / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(IntegrityError, match=f"model v6 was saved with {serialization or 'pickle'}; .*refused"):
        load_verified_model(model_dir, signature_tags(model_dir), "model v6")
    assert not marker.exists()
    pickle.loads((model_dir / "model.pkl").read_bytes()).close()
    assert marker.exists(), "the payload is live: unpickling it does create the marker"


class _Payload:
    """Unpickling this creates ``marker``: what an attacker's model.pkl would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def test_a_model_file_outside_the_directory_is_refused(model_dir: Path, tmp_path: Path) -> None:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    shutil.copyfile(model_dir / "model.skops", tmp_path / "elsewhere.skops")
    mlmodel["flavors"]["sklearn"]["pickled_model"] = "../elsewhere.skops"
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(IntegrityError, match=r"model file '\.\./elsewhere\.skops' is missing"):
        load_verified_model(model_dir, signature_tags(model_dir), "model v8")


@pytest.mark.parametrize("model_type", ["random_forest", "hist_gradient_boosting", "logistic_regression"])
def test_the_trusted_types_are_exactly_the_reviewed_ones_each_model_type_needs(
    fitted_frame: tuple[pd.DataFrame, pd.Series], model_type: str
) -> None:
    """A new type in a model (a new step, a new estimator) fails here first: review it, then add it to the list."""
    features, target = fitted_frame
    hyperparameters = {"random_forest": {"n_estimators": 3}, "hist_gradient_boosting": {"max_iter": 20}}.get(
        model_type, {}
    )
    pipeline = build_pipeline(default_schema(), model_type, hyperparameters, 0).fit(features, target)
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    assert set(untrusted) <= set(TRUSTED_TYPES)
    specific = {
        "random_forest": {"sklearn.tree._tree.Tree"},
        "hist_gradient_boosting": {"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"},
        "logistic_regression": set(),
    }
    ours = {
        "mlpipeline.features.DateParts",
        "mlpipeline.features.FeatureMatrix",
        "mlpipeline.features.CategoryOneHot",
        "mlpipeline.features.MedianImputer",
    }
    assert set(untrusted) == ours | specific[model_type]


def _pipeline_of_earlier_versions() -> Pipeline:
    """The train stage's pipeline before MedianImputer and CategoryOneHot: scikit-learn's imputers and encoder."""
    schema = default_schema()
    dates = schema.columns_of_type("date")
    numeric = schema.columns_of_type("numeric", "integer", "boolean")
    numeric += [name for column in dates for name in date_part_columns(column)]
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    scaled = Pipeline([("impute", SimpleImputer(strategy=np.median)), ("scale", StandardScaler())])
    preprocess = ColumnTransformer(
        [("numeric", scaled, numeric), ("categorical", categorical, schema.columns_of_type("categorical"))]
    )
    return Pipeline([("dates", DateParts(dates)), ("preprocess", preprocess), ("model", LogisticRegression())])


def test_models_of_earlier_versions_still_load_with_the_trusted_types(
    fitted_frame: tuple[pd.DataFrame, pd.Series],
) -> None:
    """Registered models saved before the train stage had its own steps keep loading (and predicting the same)."""
    features, target = fitted_frame
    earlier = _pipeline_of_earlier_versions().fit(features, target)
    data = skops.io.dumps(earlier)
    assert set(skops.io.get_untrusted_types(data=data)) == {
        "mlpipeline.features.DateParts",
        "numpy.dtype",
        "numpy.median",
    }
    loaded = skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    assert np.array_equal(loaded.predict_proba(features), earlier.predict_proba(features))


def test_models_with_the_column_transformer_of_our_own_steps_still_load(
    fitted_frame: tuple[pd.DataFrame, pd.Series],
) -> None:
    """Registered models saved before FeatureMatrix (a ColumnTransformer of MedianImputer, StandardScaler and
    CategoryOneHot) keep loading and predicting the same."""
    features, target = fitted_frame
    schema = default_schema()
    current = build_pipeline(schema, "logistic_regression", {}, 0)
    matrix = current.named_steps["preprocess"]
    scaled = Pipeline([("impute", MedianImputer()), ("scale", StandardScaler())])
    preprocess = ColumnTransformer(
        [("numeric", scaled, matrix.numeric), ("categorical", CategoryOneHot(), matrix.categorical)]
    )
    earlier = Pipeline(
        [("dates", current.named_steps["dates"]), ("preprocess", preprocess), ("model", LogisticRegression())]
    )
    earlier.fit(features, target)
    data = skops.io.dumps(earlier)
    assert set(skops.io.get_untrusted_types(data=data)) == {
        "mlpipeline.features.DateParts",
        "mlpipeline.features.MedianImputer",
        "mlpipeline.features.CategoryOneHot",
    }
    loaded = skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    assert np.array_equal(loaded.predict_proba(features), earlier.predict_proba(features))
