"""Small-request fast path: the fitted pipeline re-expressed as plain numpy.

scikit-learn's per-call input checks (DataFrame indexing, check_array, feature-name checks, set_output wrappers,
one Python call per boosting iteration) cost ~10 ms for one row while the arithmetic takes microseconds. For the
pipeline shape the train stage ships, the same computation is done here on the validated columns. It is built only
from step types and settings it reproduces exactly, and only used after it has matched the sklearn path bit for bit
on the model's input example (plus missing-value and unseen-category variants) at load time.

Covered: the date parts, SimpleImputer (NaN), dense OneHotEncoder(handle_unknown="ignore"), MedianImputer and
CategoryOneHot (the train stage's own steps; older models have SimpleImputer and OneHotEncoder), StandardScaler,
FeatureMatrix (the train stage's matrix of them, in place of the ColumnTransformer of earlier models), and
any final estimator on the numpy features; HistGradientBoosting classifiers (binary and multiclass) and regressors
with numeric splits are traversed in numpy (sklearn's per-tree Python calls dominate their small-request cost).

It reads private attributes of fitted estimators (``HistGradientBoostingClassifier._predictors`` and friends), so a
scikit-learn upgrade may turn it off: the server then says so (``GET /model``, ``/metrics``, a WARNING in the log)
and tests/serving/test_fastpath.py fails.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlpipeline.features import DATE_PARTS, CategoryOneHot, DateParts, FeatureMatrix, MedianImputer, date_parts
from mlpipeline.serving.schema import InputSchema

if TYPE_CHECKING:
    from mlpipeline.serving.loading import LoadedModel

log = logging.getLogger(__name__)

# Above this many rows sklearn's fixed overhead is amortised and its compiled loops beat numpy tree traversal.
FAST_PATH_MAX_ROWS = 16

ColumnStep = Callable[[np.ndarray], np.ndarray]


class NotCompilable(ValueError):
    """The fitted pipeline has a step or setting the fast path does not reproduce exactly; the message says which."""


# --------------------------------------------------------------------------------------------------------------
# Compiled preprocessing steps: a fitted sklearn transformer -> a function on a 2-D numpy block.
# --------------------------------------------------------------------------------------------------------------


def _compile_imputer(step: Any) -> ColumnStep:
    missing_values = step.missing_values
    if step.add_indicator:
        raise NotCompilable("SimpleImputer with add_indicator=True")
    if not (isinstance(missing_values, float) and math.isnan(missing_values)):
        raise NotCompilable(f"SimpleImputer with missing_values={missing_values!r} (only NaN is reproduced)")
    statistics = np.asarray(step.statistics_)
    if len(statistics) != step.n_features_in_ or pd.isna(statistics).any():
        raise NotCompilable("SimpleImputer dropped an all-missing column at fit time")

    def impute(block: np.ndarray) -> np.ndarray:
        missing = block != block  # NaN, as sklearn's mask for missing_values=np.nan (object columns included)
        if not missing.any():
            return block
        block = block.copy()
        rows, columns = np.nonzero(missing)
        block[rows, columns] = statistics[columns]
        return block

    return impute


def _compile_median_imputer(step: Any) -> ColumnStep:
    statistics = np.asarray(step.statistics_, dtype=np.float64)
    if len(statistics) != step.n_features_in_ or np.isnan(statistics).any():
        raise NotCompilable("MedianImputer dropped an all-missing column at fit time")

    def impute(block: np.ndarray) -> np.ndarray:
        missing = np.isnan(block)
        if not missing.any():  # the common request: nothing to fill, nothing to copy
            return block
        return np.where(missing, statistics, block)

    return impute


def _check_one_hot(step: Any) -> None:
    if step.drop is not None:
        raise NotCompilable(f"OneHotEncoder with drop={step.drop!r}")
    if step.handle_unknown != "ignore":
        raise NotCompilable(f"OneHotEncoder with handle_unknown={step.handle_unknown!r}")
    if step.sparse_output:
        raise NotCompilable("OneHotEncoder with sparse_output=True")
    if getattr(step, "_infrequent_enabled", False):
        raise NotCompilable("OneHotEncoder grouping infrequent categories")


def _compile_one_hot(step: Any) -> ColumnStep:
    _check_one_hot(step)
    return _one_hot_encoder(step, step.dtype, fill_codes=None)


def _compile_category_one_hot(step: Any) -> ColumnStep:
    return _one_hot_encoder(step, np.float64, fill_codes=[int(code) for code in step.fill_codes_])


def _one_hot_encoder(step: Any, dtype: Any, fill_codes: list[int] | None) -> ColumnStep:
    """A dense one-hot over ``step.categories_`` (text), an unseen category all zeros. With ``fill_codes``
    (CategoryOneHot, which imputes too) a missing value — NaN, as the schema makes it, or None — takes its column's
    fill code (-1: the column had no category at fit time, all zeros); without (OneHotEncoder, after an imputer)
    it is looked up like any value."""
    if not all(isinstance(value, str) for categories in step.categories_ for value in categories):
        raise NotCompilable(f"{type(step).__name__} with non-text categories")
    lookups = [{value: index for index, value in enumerate(categories)} for categories in step.categories_]
    offsets = np.cumsum([0] + [len(categories) for categories in step.categories_])

    def encode(block: np.ndarray) -> np.ndarray:
        out = np.zeros((block.shape[0], offsets[-1]), dtype=dtype)
        for column, lookup in enumerate(lookups):
            for row, value in enumerate(block[:, column]):
                if fill_codes is not None and (value is None or value != value):
                    index = fill_codes[column]
                else:
                    index = lookup.get(value, -1)
                if index >= 0:
                    out[row, offsets[column] + index] = 1
        return out

    return encode


def _compile_scaler(step: Any) -> ColumnStep:
    return _scaling(step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None)


def _scaling(mean: np.ndarray | None, scale: np.ndarray | None) -> ColumnStep:
    def scale_block(block: np.ndarray) -> np.ndarray:
        block = np.array(block, dtype=np.float64)  # a copy: the same in-place ops sklearn applies to its copy
        if mean is not None:
            block -= mean
        if scale is not None:
            block /= scale
        return block

    return scale_block


def _compile_step(step: Any) -> ColumnStep:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    compilers: dict[type, Callable[[Any], ColumnStep]] = {
        SimpleImputer: _compile_imputer,
        OneHotEncoder: _compile_one_hot,
        StandardScaler: _compile_scaler,
        CategoryOneHot: _compile_category_one_hot,
        MedianImputer: _compile_median_imputer,
    }
    compiler = compilers.get(type(step))  # exact types: a subclass may transform differently
    if compiler is None:
        raise NotCompilable(f"{type(step).__name__} is not a step the fast path reproduces")
    return compiler(step)


# --------------------------------------------------------------------------------------------------------------
# The final estimator and the whole pipeline.
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BoostedTrees:
    """All trees of a HistGradientBoosting classifier (binary or multiclass) or regressor as flat node arrays,
    traversed for all trees at once."""

    roots: np.ndarray  # each tree's root node, in sklearn's order: iteration after iteration, class after class
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    depth: int
    baseline: np.ndarray  # (trees per iteration,)
    loss: Any
    regression: bool

    @classmethod
    def of(cls, estimator: Any) -> BoostedTrees | None:
        """The trees of a numeric-split HistGradientBoosting classifier or regressor; None for any other estimator."""
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        if type(estimator) not in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
            return None
        nodes = [predictor.nodes for iteration in estimator._predictors for predictor in iteration]
        if not nodes or any(n["is_categorical"].any() for n in nodes):
            return None
        per_iteration = estimator.n_trees_per_iteration_
        baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
        if len(baseline) != per_iteration or len(nodes) % per_iteration:
            return None
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        flat = np.concatenate(nodes)
        shift = np.repeat(offsets, [len(n) for n in nodes])
        return cls(
            roots=offsets.astype(np.int64),
            feature=flat["feature_idx"].astype(np.int64),
            threshold=flat["num_threshold"].astype(np.float64),
            missing_left=flat["missing_go_to_left"].astype(bool),
            left=flat["left"].astype(np.int64) + shift,
            right=flat["right"].astype(np.int64) + shift,
            is_leaf=flat["is_leaf"].astype(bool),
            value=flat["value"].astype(np.float64),
            depth=int(flat["depth"].max()) + 1,
            baseline=baseline,
            loss=estimator._loss,
            regression=type(estimator) is HistGradientBoostingRegressor,
        )

    def raw(self, features: np.ndarray) -> np.ndarray:
        """The raw predictions, (rows, trees per iteration): sklearn's ``_raw_predict``."""
        n = features.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            leaf = self.is_leaf[node]
            if leaf.all():
                break
            x = features[rows, self.feature[node]]
            go_left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
        # Sequential sum from the baseline, tree after tree: the exact float order sklearn adds them in.
        per_iteration = len(self.baseline)
        if per_iteration == 1:  # binary or regression: the common case, kept 2-D (measurably faster for one row)
            return np.cumsum(np.hstack([np.full((n, 1), self.baseline[0]), self.value[node]]), axis=1)[:, -1:]
        leaves = self.value[node].reshape(n, -1, per_iteration)
        start = np.broadcast_to(self.baseline, (n, 1, per_iteration))
        summed = np.cumsum(np.concatenate([start, leaves], axis=1), axis=1)[:, -1, :]
        return np.asfortranarray(summed)  # sklearn's raw predictions are Fortran-ordered

    def predict(self, features: np.ndarray) -> np.ndarray:
        """A regressor's predictions (rows,), or a classifier's class probabilities (rows, classes)."""
        raw = self.raw(features)
        if self.regression:
            return self.loss.link.inverse(raw.ravel())
        return self.loss.predict_proba(raw)


@dataclasses.dataclass(frozen=True)
class FastPipeline:
    date_columns: tuple[str, ...]
    blocks: tuple[tuple[tuple[str, ...], tuple[ColumnStep, ...]], ...]  # ColumnTransformer parts, in order
    trees: BoostedTrees | None  # None: the final estimator's own predict(_proba) runs on the numpy features
    final_step: Any
    labels_are_argmax: bool
    regression: bool = False

    def features(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The final estimator's input: date parts, then each ColumnTransformer part, side by side."""
        columns = dict(columns)
        for date_column in self.date_columns:
            for part, values in zip(DATE_PARTS, date_parts(columns.pop(date_column)), strict=True):
                columns[f"{date_column}_{part}"] = values
        outputs = []
        for names, steps in self.blocks:
            block = np.column_stack([columns[name] for name in names])
            if block.dtype != object:
                block = block.astype(np.float64)  # what check_array makes of int/bool/float columns
            for step in steps:
                block = step(block)
            outputs.append(block)
        return np.hstack(outputs).astype(np.float64, copy=False)

    def predict(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Classifier: (labels, or None when they are the argmax of the probabilities; class probabilities).
        Regressor: (predictions, None)."""
        features = self.features(columns)
        if self.regression:
            values = self.trees.predict(features) if self.trees is not None else self.final_step.predict(features)
            return values, None
        if self.trees is not None:
            return None, self.trees.predict(features)
        proba = self.final_step.predict_proba(features)
        return (None if self.labels_are_argmax else self.final_step.predict(features)), proba


def _compile_blocks(columns: Any) -> tuple[tuple[tuple[str, ...], tuple[ColumnStep, ...]], ...]:
    """The fitted ColumnTransformer's parts as (selected column names, compiled steps), in output order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if type(columns) is FeatureMatrix:
        return _compile_feature_matrix(columns)
    if type(columns) is not ColumnTransformer:
        raise NotCompilable(f"its second step is a {type(columns).__name__}, not a ColumnTransformer or FeatureMatrix")
    if getattr(columns, "_sklearn_output_config", {}).get("transform"):
        raise NotCompilable("its ColumnTransformer has set_output(transform=...) configured")
    blocks = []
    for name, transformer, selection in columns.transformers_:
        if isinstance(transformer, str):
            if transformer == "drop":
                continue
            raise NotCompilable(f"its ColumnTransformer passes columns through ({name!r}: {transformer!r})")
        if not isinstance(selection, list) or not all(isinstance(column, str) for column in selection):
            raise NotCompilable(f"transformer {name!r} does not select its columns by a list of names")
        if not selection:
            continue  # sklearn skips empty selections
        fitted = [step for _, step in transformer.steps] if type(transformer) is Pipeline else [transformer]
        try:
            steps = tuple(_compile_step(step) for step in fitted)
        except NotCompilable as exc:
            raise NotCompilable(f"transformer {name!r}: {exc}") from None
        blocks.append((tuple(selection), steps))
    return tuple(blocks)


def _compile_feature_matrix(matrix: FeatureMatrix) -> tuple[tuple[tuple[str, ...], tuple[ColumnStep, ...]], ...]:
    """FeatureMatrix as the two ColumnTransformer parts it computes: numeric (MedianImputer, then its scaling),
    categorical (CategoryOneHot); the same element-wise operations, so the same bits."""
    blocks = []
    numeric = tuple(str(name) for name in matrix.imputer_.feature_names_in_)
    if numeric:
        try:
            steps = [_compile_median_imputer(matrix.imputer_)]
        except NotCompilable as exc:
            raise NotCompilable(f"its numeric columns: {exc}") from None
        if matrix.scale:
            steps.append(_scaling(matrix.mean_, matrix.scale_))
        blocks.append((numeric, tuple(steps)))
    categorical = tuple(str(name) for name in matrix.one_hot_.feature_names_in_)
    if categorical:
        blocks.append((categorical, (_compile_category_one_hot(matrix.one_hot_),)))
    return tuple(blocks)


def compile_pipeline(
    model: Any, schema: InputSchema, labels_are_argmax: bool, *, regression: bool = False
) -> FastPipeline:
    """The fast equivalent of a fitted ``Pipeline([DateParts, ColumnTransformer, classifier or regressor])``.

    Raises :class:`NotCompilable` naming the first step or setting it does not reproduce.
    """
    from sklearn.pipeline import Pipeline

    if type(model) is not Pipeline or len(model.steps) != 3:
        raise NotCompilable("the model is not a 3-step Pipeline (DateParts, ColumnTransformer, estimator)")
    dates, columns, final = (step for _, step in model.steps)
    if type(dates) is not DateParts:
        raise NotCompilable(f"its first step is a {type(dates).__name__}, not DateParts")
    types = {c.name: c.type for c in schema.columns}
    date_columns = tuple(dates.date_columns or ())
    not_dates = [name for name in date_columns if types.get(name) != "datetime"]
    if not_dates:
        raise NotCompilable(f"date column(s) {not_dates} are not datetime inputs in the signature")
    blocks = _compile_blocks(columns)
    trees = BoostedTrees.of(final) if labels_are_argmax or regression else None
    if trees is not None and trees.regression != regression:
        raise NotCompilable("its boosted trees are not of the kind (classifier or regressor) the model serves as")
    return FastPipeline(date_columns, blocks, trees, final, labels_are_argmax, regression)


# --------------------------------------------------------------------------------------------------------------
# Verification at load time, and what the server reports about it.
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FastPathStatus:
    """Whether a model version got the fast path; if not, why (shown by ``GET /model``)."""

    pipeline: FastPipeline | None
    reason: str | None = None  # set exactly when pipeline is None

    @property
    def active(self) -> bool:
        return self.pipeline is not None

    def to_dict(self) -> dict[str, Any]:
        return {"active": self.active, "reason": self.reason}


NOT_VERIFIED = FastPathStatus(None, "not verified against scikit-learn")


def fast_path_off(what: str, reason: str) -> FastPathStatus:
    """The status of a model that serves every request through scikit-learn; logged, since it costs latency."""
    log.warning("model %s: numpy fast path off, every request uses scikit-learn: %s", what, reason)
    return FastPathStatus(None, reason)


def verification_rows(example_rows: list[dict[str, Any]], schema: InputSchema) -> list[dict[str, Any]]:
    """The input example plus, from its first row, each column missing in turn and each text column unseen."""
    variants = [dict(row) for row in example_rows]
    first = example_rows[0]
    for column in schema.columns:
        variants.append({**first, column.name: None})
        if column.type == "string":
            variants.append({**first, column.name: "__never_seen_category__"})
    variants.append({name: None for name in first})
    return variants


def _first_mismatch(loaded: LoadedModel, fast: FastPipeline, example_rows: list[dict[str, Any]]) -> str | None:
    """Where the fast path answers differently from scikit-learn (a description), or None if it never does."""
    general = dataclasses.replace(loaded, fast_path=NOT_VERIFIED)
    candidate = dataclasses.replace(loaded, fast_path=FastPathStatus(fast))
    for index, row in enumerate(verification_rows(example_rows, loaded.schema)):
        if candidate.predict_rows([row]) != general.predict_rows([row]):
            return f"verification row {index} {row}"
    batch = example_rows[:FAST_PATH_MAX_ROWS]
    if candidate.predict_rows(batch) != general.predict_rows(batch):
        return f"the {len(batch)}-row input example as one request"
    return None


def verify_fast_path(loaded: LoadedModel, example_rows: list[dict[str, Any]], what: str) -> FastPathStatus:
    """The fast path for ``loaded``, if it gives exactly the sklearn path's answers on the example and variants."""
    try:
        regression = loaded.task == "regression"
        fast = compile_pipeline(loaded.model, loaded.schema, loaded.labels_are_argmax, regression=regression)
        mismatch = _first_mismatch(loaded, fast, example_rows)
    except NotCompilable as exc:
        return fast_path_off(what, f"the pipeline is not one it reproduces: {exc}")
    except Exception as exc:  # an unexpected model detail must cost speed, never correctness or availability
        return fast_path_off(what, f"building or checking it failed ({type(exc).__name__}: {exc})")
    if mismatch is not None:
        return fast_path_off(what, f"it disagrees with scikit-learn on {mismatch}")
    return FastPathStatus(fast)
