"""The dataset schemas and data of the monitor tests.

``SCHEMA``: the model factory's churn features (binary), one of each kind. ``FRUIT_SCHEMA`` (multiclass, string
labels) and ``PRICE_SCHEMA`` (regression) use column names with spaces, parentheses and slashes, as real data has.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlpipeline.config import DatasetSchema
from tests.model_factory import TARGET

SCHEMA = DatasetSchema(
    target=TARGET,
    columns=[
        {"name": "tenure_months", "type": "integer"},
        {"name": "support_tickets", "type": "integer"},
        {"name": "monthly_charges", "type": "numeric"},
        {"name": "contract", "type": "categorical"},
        {"name": "region", "type": "categorical"},
        {"name": "paperless_billing", "type": "boolean"},
        {"name": "signup_date", "type": "date"},
    ],
)

FRUIT = "fruit kind"
FRUITS = ["apple", "banana", "cherry (sour)"]
SIZE, SHADE, RIPE = "size (cm)", "colour/shade", "is ripe"
FRUIT_SCHEMA = DatasetSchema(
    target=FRUIT,
    columns=[
        {"name": SIZE, "type": "numeric"},
        {"name": SHADE, "type": "categorical"},
        {"name": RIPE, "type": "boolean"},
    ],
)
USUAL_MIX = (0.5, 0.3, 0.2)
SHIFTED_MIX = (0.15, 0.25, 0.6)

PRICE = "sale price ($)"
AREA, ROOMS = "area / m2", "rooms (count)"
PRICE_SCHEMA = DatasetSchema(
    target=PRICE,
    columns=[{"name": AREA, "type": "numeric"}, {"name": ROOMS, "type": "integer"}],
)


def fruit_frame(n: int, seed: int, mix: tuple[float, float, float] = USUAL_MIX) -> pd.DataFrame:
    """Multiclass rows, string labels as the processed data keeps them; each fruit has its own size and shades."""
    rng = np.random.default_rng(seed)
    fruit = rng.choice(FRUITS, n, p=list(mix))
    size = np.select([fruit == "apple", fruit == "banana"], [rng.normal(8, 1, n), rng.normal(15, 2, n)])
    size = np.where(fruit == "cherry (sour)", rng.normal(2, 0.5, n), size)
    shades = {"apple": ["red", "green"], "banana": ["yellow", "green"], "cherry (sour)": ["red", "dark red"]}
    shade = [shades[f][i] for f, i in zip(fruit, rng.integers(0, 2, n), strict=True)]
    return pd.DataFrame(
        {SIZE: size, SHADE: pd.Series(shade, dtype=object), RIPE: rng.random(n) < 0.7, FRUIT: fruit.astype(object)}
    )


def price_frame(n: int, seed: int, area_shift: float = 0.0) -> pd.DataFrame:
    """Regression rows: the price follows the area (shifted by ``area_shift`` m2) and the rooms."""
    rng = np.random.default_rng(seed)
    area = rng.normal(90 + area_shift, 20, n)
    rooms = np.clip(np.round(area / 30 + rng.normal(0, 0.5, n)), 1, None).astype(np.int64)
    price = 2500 * area + 8000 * rooms + rng.normal(0, 15000, n)
    return pd.DataFrame({AREA: area, ROOMS: rooms, PRICE: price.astype(np.float64)})


def training_features(frame: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """The features as the train stage fits on them: integers and booleans as floats."""
    features = frame[schema.feature_names].copy()
    for name in schema.columns_of_type("integer", "boolean"):
        features[name] = features[name].astype("float64")
    return features


def fruit_model(frame: pd.DataFrame) -> Pipeline:
    """A multiclass pipeline over the odd column names, with string classes."""
    columns = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), [SIZE, RIPE]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [SHADE]),
        ]
    )
    model = Pipeline([("columns", columns), ("model", RandomForestClassifier(n_estimators=15, random_state=0))])
    return model.fit(training_features(frame, FRUIT_SCHEMA), frame[FRUIT])


def price_model(frame: pd.DataFrame) -> Pipeline:
    columns = ColumnTransformer([("num", SimpleImputer(strategy="median"), [AREA, ROOMS])])
    model = Pipeline([("columns", columns), ("model", RandomForestRegressor(n_estimators=15, random_state=0))])
    return model.fit(training_features(frame, PRICE_SCHEMA), frame[PRICE])
