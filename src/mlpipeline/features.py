"""Feature engineering shared by the ETL stage (for the processed dataset) and the model (at serving time).

The model embeds :class:`DateParts`, so the endpoint accepts the raw declared columns and derives the same
features the ETL wrote; the two can never disagree. Every logged model carries a copy of this file as
``mlpipeline/features.py`` (``registry.model_code_paths``), so it imports nothing from mlpipeline, and
``mlpipeline.features.DateParts`` keeps its name: registered models (skops files) refer to it, and it is one of
the reviewed types models may contain (``integrity.TRUSTED_TYPES``).
"""

from __future__ import annotations

import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

DATE_PARTS: tuple[str, ...] = ("year", "month", "dayofweek", "dayofyear")


def date_part_columns(date_column: str) -> list[str]:
    return [f"{date_column}_{part}" for part in DATE_PARTS]


def add_date_parts(frame: pd.DataFrame, date_columns: list[str], *, drop: bool = False) -> pd.DataFrame:
    """Return ``frame`` with ``<col>_year/_month/_dayofweek/_dayofyear`` for each date column."""
    out = frame.copy()
    for column in date_columns:
        values = pd.to_datetime(out[column], errors="coerce")
        for part in DATE_PARTS:
            # Float keeps missing dates as NaN for the imputer rather than failing.
            out[f"{column}_{part}"] = getattr(values.dt, part).astype("float64")
        if drop:
            out = out.drop(columns=column)
    return out


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
