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
    any_missing = bool(missing.any())
    if any_missing:  # any real day will do (its parts become NaN): the first present one keeps the range short
        days = np.where(missing, days[np.argmin(missing)] if not missing.all() else np.datetime64(0, "D"), days)
    if days.size <= _CALENDAR_CONVERSION_MAX:
        floats = [part.astype(np.float64) for part in _parts_by_conversion(days)]
    else:
        floats = _parts_by_table(days.view(np.int64))
    if any_missing:
        for part in floats:
            part[missing] = np.nan
    return floats


def _parts_by_table(day: np.ndarray) -> list[np.ndarray]:
    # A column of dates spans far fewer days than it has rows: the parts of each day of the span, computed once,
    # are looked up per row (one gather per part instead of ~30 whole-column operations).
    first, last = int(day.min()), int(day.max())
    if last - first >= day.size:  # dates scattered over a longer span than there are rows: compute per row
        return [part.astype(np.float64) for part in _parts_by_arithmetic(day)]
    offsets = day - first
    span = _parts_by_arithmetic(np.arange(first, last + 1, dtype=np.int64))
    return [table.astype(np.float64).take(offsets) for table in span]


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
    if not frame.columns.is_unique:
        kept = frame.drop(columns=date_columns) if drop else frame
        return kept.assign(**parts)
    # A new frame around the same column arrays (drop + assign copied every column, twice); a part named like an
    # existing column replaces it in place, as assign does.
    kept_columns = {name: frame[name] for name in frame.columns if not (drop and name in date_columns)}
    return pd.DataFrame({**kept_columns, **parts}, index=frame.index, copy=False)


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
        self.fit_columns(names, [matrix[:, index] for index in range(matrix.shape[1])])

    def fit_columns(self, names: Any, columns: list[np.ndarray], holes: list[bool] | None = None) -> MedianImputer:
        """Fit on float64 columns given one by one (``FeatureMatrix``'s input, never stacked into a matrix);
        ``holes`` says which have missing values, if known."""
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(columns)
        statistics = np.full(len(columns), np.nan)
        for index, column in enumerate(columns):
            present = column[~np.isnan(column)] if holes is None or holes[index] else column
            if len(present):
                statistics[index] = exact_median(present)
        self.statistics_ = statistics
        return self

    def _fill(self, matrix: np.ndarray) -> np.ndarray:
        filled = np.where(np.isnan(matrix), self.statistics_, matrix)  # a new array: the input stays as it was
        empty = np.isnan(self.statistics_)
        return filled[:, ~empty] if empty.any() else filled


# Integer-valued columns (counts, flags, date parts) whose values span fewer than this many integers get their
# median from a count of each value (a few linear passes) instead of a partition (np.median's introselect).
_COUNTED_MEDIAN_MAX_SPAN = 1 << 16


def exact_median(present: np.ndarray) -> float:
    """``np.median`` of a column's present (non-NaN) values, equal to it."""
    head = present[:64]
    if len(head) and np.array_equal(head, np.floor(head)):  # fractions in the first values rule out counting
        counted = _counted_median(present)
        if counted is not None:
            return counted
    return _selected_median(present)


# The middle ranks of a long column are looked for among its values between two quantiles of an evenly spaced
# sample of this many (whose middle they lie within, but for a fraction of a percent of columns).
_MEDIAN_SAMPLE = 4096


def _selected_median(present: np.ndarray) -> float:
    """np.median, partitioning only the values between the 47th and 53rd percentiles of a sample (a few
    comparisons per value instead of a copy and a partition of the whole column)."""
    size = len(present)
    if size < 16 * _MEDIAN_SAMPLE:
        return float(np.median(present))
    sample = np.sort(present[:: size // _MEDIAN_SAMPLE])
    low, high = sample[int(len(sample) * 0.47)], sample[int(len(sample) * 0.53)]
    below = int(np.count_nonzero(present < low))
    between = present[(present >= low) & (present <= high)]
    ranks = [size // 2] if size % 2 else [size // 2 - 1, size // 2]
    if not all(below <= rank < below + len(between) for rank in ranks):  # the sample missed: partition it all
        return float(np.median(present))
    kth = [rank - below for rank in ranks]
    # np.median's own last step: the mean of the middle value or of the two middle ones.
    return float(np.mean(np.partition(between, kth)[kth]))


def _counted_median(present: np.ndarray) -> float | None:
    """The median of integer-valued values from a count of each value (None: not integers of a short span)."""
    low, high = float(present.min()), float(present.max())
    if not (high - low < _COUNTED_MEDIAN_MAX_SPAN and low == np.floor(low)):
        return None
    whole = present.astype(np.int64)
    if not np.array_equal(whole, present):  # fractions after all
        return None
    whole -= int(low)
    below = np.cumsum(np.bincount(whole))  # below[v]: how many values are <= low + v
    size = len(present)
    # np.median: the middle value, or the mean of the two middle ones, computed by np.mean as it does.
    ranks = [size // 2] if size % 2 else [size // 2 - 1, size // 2]
    middle = [low + float(np.searchsorted(below, rank, side="right")) for rank in ranks]
    return float(np.mean(np.asarray(middle, dtype=np.float64)))


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
            typed = _text_categorical(values)
            if typed is not None:  # a look-up per category, then the rows' codes through it
                lookup = pd.Index(categories, dtype=object).get_indexer(typed.categories)
                codes[:, index] = np.append(lookup, self.fill_codes_[index])[typed.codes]  # code -1: missing
                continue
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
        codes = np.empty(frame.shape, dtype=np.int64, order="F")  # filled, and read, column by column
        for index, column in enumerate(frame.columns):
            typed = _text_categorical(frame[column])
            if typed is not None:  # categories sorted, counted and filled in from the Categorical's own codes
                uniques, fill = _sorted_codes(typed, out=codes[:, index])
            else:
                found, uniques = pd.factorize(frame[column], sort=True)  # sorted categories; missing values: -1
                counts = np.bincount(found[found >= 0], minlength=len(uniques))
                fill = int(np.argmax(counts)) if len(uniques) else -1  # argmax: the first of the most frequent
                found[found < 0] = fill
                codes[:, index] = found
            self.categories_.append(np.asarray(uniques, dtype=object))
            fill_codes.append(fill)
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


def _text_categorical(values: pd.Series) -> pd.Categorical | None:
    """The column's Categorical if it is one of text categories (as Parquet's dictionary-encoded text is read)."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return None
    categories = values.dtype.categories
    return values.array if len(categories) == 0 or categories.inferred_type == "string" else None


def _sorted_codes(typed: pd.Categorical, out: np.ndarray) -> tuple[np.ndarray, int]:
    """What the text path of ``CategoryOneHot._fit_codes`` computes, from the Categorical's codes: the categories
    that occur in sorted order (those of ``pd.factorize(text, sort=True)``), whatever order the Categorical keeps
    its own in, and the fill code (the first of the most frequent); each row's code into ``out``, missing filled."""
    counts = np.bincount(typed.codes.astype(np.intp) + 1, minlength=len(typed.categories) + 1)[1:]
    occurring = np.flatnonzero(counts)
    names = np.asarray(typed.categories, dtype=object)[occurring]
    order = np.argsort(names, kind="stable")
    fill = int(np.argmax(counts[occurring[order]])) if len(order) else -1
    renumber = np.full(len(typed.categories) + 1, fill, dtype=np.int64)  # its last entry: for code -1, missing
    renumber[occurring[order]] = np.arange(len(order))
    np.take(renumber, typed.codes, out=out, mode="wrap")  # "wrap": -1 is the last entry, unbuffered
    return names[order], fill


def _frame(X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    return X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, dtype=object))


# Rows written per block of the output matrix: a block of a few dozen float64 columns stays in the CPU cache
# while it is filled, scaled and transposed.
_BLOCK_ROWS = 16_384


class FeatureMatrix(BaseEstimator, TransformerMixin):
    """sklearn step: the estimator's whole input as one float64 matrix in C order (the layout the linear models'
    solvers read without a copy): the ``numeric`` columns median-imputed (``MedianImputer``) and, with ``scale``,
    standardised (``StandardScaler``'s mean and scale, equal up to the rounding of their sums), then the
    ``categorical`` columns imputed and one-hot encoded (``CategoryOneHot``).

    What ``ColumnTransformer([("numeric", Pipeline([MedianImputer(), StandardScaler()]), numeric), ("categorical",
    CategoryOneHot(), categorical)])`` computes, written block of rows by block into one allocation instead of
    selected, converted, filled, scaled and stacked as whole-matrix copies."""

    def __init__(
        self, numeric: list[str] | None = None, categorical: list[str] | None = None, scale: bool = False
    ) -> None:
        self.numeric = numeric
        self.categorical = categorical
        self.scale = scale

    def fit(self, X: pd.DataFrame, y: object = None) -> FeatureMatrix:
        self._fit(X)
        return self

    def fit_transform(self, X: pd.DataFrame, y: object = None, **fit_params: Any) -> np.ndarray:
        return self._matrix(*self._fit(X))

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        frame = _named_frame(X)
        # The columns MedianImputer keeps: one with no value at fit time is dropped, as SimpleImputer drops it.
        kept = self.imputer_.feature_names_in_[~np.isnan(self.imputer_.statistics_)]
        columns, holes = _float_columns(frame, kept)
        return self._matrix(columns, holes, self.one_hot_.codes(_select(frame, self.categorical)))

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        names = [*self.imputer_.get_feature_names_out(), *self.one_hot_.get_feature_names_out()]
        return np.asarray(names, dtype=object)

    def _fit(self, X: pd.DataFrame) -> tuple[list[np.ndarray], list[bool], np.ndarray]:
        frame = _named_frame(X)
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        numeric = list(self.numeric or [])
        columns, holes = _float_columns(frame, numeric)
        self.imputer_ = MedianImputer().fit_columns(numeric, columns, holes)
        kept = ~np.isnan(self.imputer_.statistics_)  # a column without any value is dropped
        columns = [column for column, keep in zip(columns, kept, strict=True) if keep]
        holes = [hole for hole, keep in zip(holes, kept, strict=True) if keep]
        self.mean_, self.scale_ = _mean_and_scale(columns, holes, self._medians()) if self.scale else (None, None)
        self.one_hot_ = CategoryOneHot()
        return columns, holes, self.one_hot_._fit_codes(_select(frame, self.categorical))

    def _medians(self) -> np.ndarray:
        statistics = self.imputer_.statistics_
        return statistics[~np.isnan(statistics)]

    def _matrix(self, columns: list[np.ndarray], holes: list[bool], codes: np.ndarray) -> np.ndarray:
        starts = np.cumsum([len(columns)] + [len(categories) for categories in self.one_hot_.categories_])
        out = np.empty((codes.shape[0], starts[-1]), dtype=np.float64)  # every value is written below
        if columns:
            self._write_numeric(out, columns, holes)
        if np.prod([len(c) + 1 for c in self.one_hot_.categories_], dtype=np.float64) <= _ONE_HOT_TABLE_MAX_ROWS:
            _write_one_hot(out, codes, starts[:-1])
        else:  # too many combinations for a table: CategoryOneHot's own matrix, copied in
            out[:, starts[0] :] = self.one_hot_._one_hot(codes)
        return out

    def _write_numeric(self, out: np.ndarray, columns: list[np.ndarray], holes: list[bool]) -> None:
        """The imputed (and scaled) columns into ``out``'s first columns, a block of rows at a time: columns are
        contiguous in the input and rows in the output, so each block is filled and scaled as contiguous rows of
        a (columns, rows) buffer that stays in the CPU cache, then transposed into place."""
        medians = self._medians()[:, None]
        mean = None if self.mean_ is None else self.mean_[:, None]
        scale = None if self.scale_ is None else self.scale_[:, None]
        buffer = np.empty((len(columns), min(_BLOCK_ROWS, len(out))), dtype=np.float64)
        for start in range(0, len(out), _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, len(out))
            values = buffer[:, : stop - start]
            for index, column in enumerate(columns):
                values[index] = column[start:stop]
            if any(holes):
                np.copyto(values, medians, where=np.isnan(values))
            if mean is not None and scale is not None:  # StandardScaler.transform's in-place operations, in order
                values -= mean
                values /= scale
            out[start:stop, : len(columns)] = values.T


# Up to this many combinations of categories (one more per column: none of them), a row's whole one-hot part is
# one row of a table of them all, copied in one gather.
_ONE_HOT_TABLE_MAX_ROWS = 4096


def _write_one_hot(out: np.ndarray, codes: np.ndarray, starts: np.ndarray) -> None:
    """The one-hot columns of ``out`` (from ``starts[0]`` on): per categorical column a 1 at its start plus the
    row's code (none for code -1: an unseen category, or a column without categories), zeros elsewhere; each
    row's part copied from a table of every combination of codes (a digit per column: code + 1)."""
    if codes.shape[1] == 0:
        return
    radix = np.diff(np.append(starts, out.shape[1])) + 1
    place = np.cumprod(np.append(1, radix[:-1]))  # each column's digit of the combination number
    combination = np.arange(int(np.prod(radix)))
    table = np.zeros((len(combination), out.shape[1] - starts[0]), dtype=np.float64)
    for index, first in enumerate(starts - starts[0]):
        code = combination // place[index] % radix[index] - 1
        table[np.flatnonzero(code >= 0), first + code[code >= 0]] = 1.0
    number, term = np.empty((2, min(_BLOCK_ROWS, len(out))), dtype=np.intp)
    gathered = np.empty((len(number), table.shape[1]), dtype=np.float64)
    for start in range(0, len(out), _BLOCK_ROWS):
        rows = min(_BLOCK_ROWS, len(out) - start)
        combined = number[:rows]
        combined.fill(int(place.sum()))  # the +1 of every digit
        for index in range(codes.shape[1]):
            combined += np.multiply(codes[start : start + rows, index], place[index], out=term[:rows])
        np.take(table, combined, axis=0, out=gathered[:rows], mode="clip")
        out[start : start + rows, starts[0] :] = gathered[:rows]


def _mean_and_scale(columns: list[np.ndarray], holes: list[bool], medians: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler's ``mean_`` and ``scale_`` of the imputed columns (its test for a constant column, scale 1),
    equal up to rounding: the sums of each column's deviations from its median (close to its mean, so the
    variance is as exact as StandardScaler's two passes) in one pass, a cached block of rows at a time."""
    rows = len(columns[0]) if columns else 0
    means, variances = np.zeros(len(columns)), np.zeros(len(columns))
    buffer = np.empty(min(_BLOCK_ROWS, rows), dtype=np.float64)
    for index, (column, hole, median) in enumerate(zip(columns, holes, medians, strict=True)):
        total = squares = 0.0
        for start in range(0, rows, _BLOCK_ROWS):
            block = column[start : start + _BLOCK_ROWS]
            deviation = np.subtract(block, median, out=buffer[: len(block)])
            if hole:  # a missing value is imputed with the median: no deviation
                deviation[np.isnan(deviation)] = 0.0
            total += float(deviation.sum())
            squares += float(np.square(deviation, out=deviation).sum())  # not np.dot: no BLAS threads per block
        means[index] = median + total / rows
        variances[index] = (squares - total**2 / rows) / rows
    epsilon = np.finfo(np.float64).eps
    constant = variances <= rows * epsilon * variances + (rows * means * epsilon) ** 2
    scales = np.sqrt(variances)
    scales[constant] = 1.0
    return means, scales


def _float_columns(frame: pd.DataFrame, names: Any) -> tuple[list[np.ndarray], list[bool]]:
    """The named columns as float64 arrays (pandas' own when they are float64: no copy) and, for each, whether it
    has a missing value (NaN), from one pass; infinity is refused, as scikit-learn's imputers refuse it."""
    columns, holes = [], []
    for name in names:
        values = frame[name]
        column = values.to_numpy() if values.dtype == np.float64 else _float_matrix(values.to_frame())[:, 0]
        finite = bool(np.isfinite(column).all())
        if not finite and np.isinf(column).any():
            raise ValueError("Input contains infinity or a value too large for dtype('float64').")
        columns.append(column)
        holes.append(not finite)
    return columns, holes


def _named_frame(X: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"FeatureMatrix selects its columns by name: it needs a DataFrame, not {type(X).__name__}")
    return X


def _select(frame: pd.DataFrame, names: list[str] | None) -> pd.DataFrame:
    # A frame around the same column arrays: frame[names] would copy them.
    return pd.DataFrame({name: frame[name] for name in names or []}, index=frame.index, copy=False)
