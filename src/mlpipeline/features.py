"""Feature engineering shared by the ETL stage (for the processed dataset) and the model (at serving time).

The model embeds :class:`DateParts`, so the endpoint accepts the raw declared columns and derives the same
features the ETL wrote; the two can never disagree. Every logged model carries a copy of this file as
``mlpipeline/features.py`` (``registry.model_code_paths``), so it imports nothing from mlpipeline, and its steps
(``DateParts``, ``MedianImputer``, ``CategoryOneHot``) keep their names: registered models (skops files) refer to
them, and they are reviewed types models may contain (``integrity.TRUSTED_TYPES``).

``MedianImputer`` and ``CategoryOneHot`` compute what scikit-learn's ``SimpleImputer`` and ``OneHotEncoder`` did in
models trained before them (which keep loading and serving with those), vectorised: numpy and pandas' hash tables
instead of object-dtype Python loops and masked arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

DATE_PARTS: tuple[str, ...] = ("year", "month", "dayofweek", "dayofyear")


def date_part_columns(date_column: str) -> list[str]:
    return [f"{date_column}_{part}" for part in DATE_PARTS]


# Below this many values numpy's own calendar conversions are faster (fewer calls: the serving fast path's one
# row); above it, integer arithmetic on the day numbers is (the train stage's whole columns).
_CALENDAR_CONVERSION_MAX = 512


def date_parts(values: np.ndarray) -> list[np.ndarray]:
    """year, month, dayofweek, dayofyear of a datetime64 array as float64 (NaN for NaT): pandas' ``.dt`` parts
    (the proleptic Gregorian calendar), either way computed exactly."""
    days = values.astype("datetime64[D]")  # floors, as the calendar date of a time before 1970 needs
    missing = np.isnat(days)
    days = np.where(missing, np.datetime64(0, "D"), days)
    if days.size <= _CALENDAR_CONVERSION_MAX:
        parts = _parts_by_conversion(days)
    else:
        parts = _parts_by_arithmetic(days.view(np.int64))
    floats = [part.astype(np.float64) for part in parts]
    for part in floats:
        part[missing] = np.nan
    return floats


def _parts_by_conversion(days: np.ndarray) -> tuple[np.ndarray, ...]:
    years = days.astype("datetime64[Y]")
    year = years.astype(np.int64) + 1970
    month = days.astype("datetime64[M]").astype(np.int64) - (year - 1970) * 12 + 1
    dayofweek = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    dayofyear = (days - years).astype(np.int64) + 1
    return year, month, dayofweek, dayofyear


def _parts_by_arithmetic(day: np.ndarray) -> tuple[np.ndarray, ...]:
    # Howard Hinnant's civil_from_days: 400-year eras of 146,097 days, years counted from March 1 so that the
    # leap day is the last day of a year.
    era = (day + 719_468) // 146_097
    day_of_era = day + 719_468 - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_from_march = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_from_march = (5 * day_from_march + 2) // 153
    january_or_february = month_from_march >= 10
    month = np.where(january_or_february, month_from_march - 9, month_from_march + 3)
    year = year_of_era + era * 400 + january_or_february
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    # March 1 is day 60 (61 in a leap year) of its calendar year; January 1 is day 306 from March.
    dayofyear = np.where(january_or_february, day_from_march - 305, day_from_march + 60 + leap)
    dayofweek = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return year, month, dayofweek, dayofyear


def add_date_parts(frame: pd.DataFrame, date_columns: list[str], *, drop: bool = False) -> pd.DataFrame:
    """Return ``frame`` with ``<col>_year/_month/_dayofweek/_dayofyear`` for each date column."""
    parts: dict[str, Any] = {}
    for column in date_columns:
        values = frame[column]
        if not pd.api.types.is_datetime64_any_dtype(values):
            # Only when needed: even on datetimes, to_datetime makes ~10,000 Timestamps to decide about a cache.
            values = pd.to_datetime(values, errors="coerce")
        if isinstance(values.dtype, np.dtype):  # naive datetime64 of any unit: the vectorised calendar
            derived = date_parts(values.to_numpy())
        else:  # time-zone aware: the parts of the local time, as pandas derives them
            derived = [getattr(values.dt, part).to_numpy(dtype="float64", na_value=np.nan) for part in DATE_PARTS]
        # Float keeps missing dates as NaN for the imputer rather than failing.
        parts.update(zip(date_part_columns(column), derived, strict=True))
    kept = frame.drop(columns=date_columns) if drop else frame
    return kept.assign(**parts)


class DateParts(BaseEstimator, TransformerMixin):
    """sklearn step: replace each date column by its numeric parts."""

    def __init__(self, date_columns: list[str] | None = None) -> None:
        self.date_columns = date_columns

    def fit(self, X: pd.DataFrame, y: object = None) -> DateParts:
        self.feature_names_in_ = list(X.columns)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return add_date_parts(X, list(self.date_columns or []), drop=True)

    def get_feature_names_out(self, input_features: object = None) -> list[str]:
        names = [n for n in self.feature_names_in_ if n not in (self.date_columns or [])]
        for column in self.date_columns or []:
            names.extend(date_part_columns(column))
        return names


class MedianImputer(BaseEstimator, TransformerMixin):
    """sklearn step for numbers: a missing value (NaN) becomes its column's training median, and a column without
    any value at fit time is dropped. What ``SimpleImputer(strategy="median")`` computes (the median of each
    column's present values, as ``SimpleImputer(strategy=np.median)`` takes it), with one conversion to a float
    matrix per call instead of two input checks and a masked-array pass per fit_transform."""

    def fit(self, X: pd.DataFrame | np.ndarray, y: object = None) -> MedianImputer:
        self._fit(X, _float_matrix(X))
        return self

    def fit_transform(self, X: pd.DataFrame | np.ndarray, y: object = None, **fit_params: Any) -> np.ndarray:
        matrix = _float_matrix(X)
        self._fit(X, matrix)
        return self._fill(matrix)

    def transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self._fill(_float_matrix(X))

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return self.feature_names_in_[~np.isnan(self.statistics_)]

    def _fit(self, X: pd.DataFrame | np.ndarray, matrix: np.ndarray) -> None:
        names = X.columns if isinstance(X, pd.DataFrame) else [f"x{index}" for index in range(matrix.shape[1])]
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = matrix.shape[1]
        statistics = np.full(matrix.shape[1], np.nan)
        for index in range(matrix.shape[1]):
            column = matrix[:, index]
            present = column[~np.isnan(column)]
            if len(present):
                statistics[index] = np.median(present)
        self.statistics_ = statistics

    def _fill(self, matrix: np.ndarray) -> np.ndarray:
        filled = np.where(np.isnan(matrix), self.statistics_, matrix)  # a new array: the input stays as it was
        empty = np.isnan(self.statistics_)
        return filled[:, ~empty] if empty.any() else filled


def _float_matrix(X: pd.DataFrame | np.ndarray) -> np.ndarray:
    matrix = X.to_numpy(dtype=np.float64) if isinstance(X, pd.DataFrame) else np.asarray(X, dtype=np.float64)
    if np.isinf(matrix).any():  # as scikit-learn's imputers: only NaN is a missing value
        raise ValueError("Input contains infinity or a value too large for dtype('float64').")
    return matrix


class CategoryOneHot(BaseEstimator, TransformerMixin):
    """sklearn step for text categories: a missing value becomes its column's most frequent training category
    (ties: the first in sorted order), then a dense float64 one-hot over the sorted training categories, where an
    unseen category is all zeros. What ``SimpleImputer(strategy="most_frequent")`` + ``OneHotEncoder(
    handle_unknown="ignore", sparse_output=False)`` compute, on integer codes from pandas' hash tables instead of
    object-dtype Python loops (a Counter per column, a dict look-up per value)."""

    def fit(self, X: pd.DataFrame | np.ndarray, y: object = None) -> CategoryOneHot:
        self._fit_codes(_frame(X))
        return self

    def fit_transform(self, X: pd.DataFrame | np.ndarray, y: object = None, **fit_params: Any) -> np.ndarray:
        # The codes fitting finds are the transform's: one hash pass per column instead of two.
        return self._one_hot(self._fit_codes(_frame(X)))

    def transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self._one_hot(self.codes(X))

    def codes(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(rows, columns) integer codes into ``categories_``: missing values imputed, unseen categories -1."""
        frame = _frame(X)
        codes = np.empty(frame.shape, dtype=np.int64)
        for index, column in enumerate(frame.columns):
            values = frame[column]
            categories = self.categories_[index]
            # NaN is one more "category" of the hash table; None, pd.NA, NaT are found among the rest (rare).
            found = pd.Index([*categories, np.nan], dtype=object).get_indexer(values)
            missing = found == len(categories)
            unknown = np.flatnonzero(found < 0)
            missing[unknown[values.iloc[unknown].isna().to_numpy()]] = True
            found[missing] = self.fill_codes_[index]
            codes[:, index] = found
        return codes

    def _fit_codes(self, frame: pd.DataFrame) -> np.ndarray:
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.categories_: list[np.ndarray] = []
        fill_codes = []
        codes = np.empty(frame.shape, dtype=np.int64)
        for index, column in enumerate(frame.columns):
            found, uniques = pd.factorize(frame[column], sort=True)  # missing values: -1
            counts = np.bincount(found[found >= 0], minlength=len(uniques))
            self.categories_.append(np.asarray(uniques, dtype=object))
            fill_codes.append(int(np.argmax(counts)) if len(uniques) else -1)  # argmax: the first of the most
            found[found < 0] = fill_codes[-1]
            codes[:, index] = found
        # Per column, the code a missing value gets (-1: the column had no value at all, so all zeros).
        self.fill_codes_ = np.asarray(fill_codes, dtype=np.int64)
        return codes

    def _one_hot(self, codes: np.ndarray) -> np.ndarray:
        offsets = np.cumsum([0] + [len(categories) for categories in self.categories_])
        out = np.zeros((codes.shape[0], offsets[-1]), dtype=np.float64)
        # At most one 1 per row and column, at the flat position row * width + offset + code.
        flat = codes + offsets[:-1] + (np.arange(codes.shape[0]) * offsets[-1])[:, None]
        out.reshape(-1)[flat[codes >= 0]] = 1.0
        return out

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray(
            [
                f"{column}_{category}"
                for column, categories in zip(self.feature_names_in_, self.categories_, strict=True)
                for category in categories
            ],
            dtype=object,
        )


def _frame(X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    return X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, dtype=object))
