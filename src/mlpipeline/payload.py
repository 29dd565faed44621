"""DataFrame rows as the JSON the model server takes: used by deploy's smoke test, monitoring and the demo."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd


def json_value(value: Any) -> Any:
    """NaN/NaT -> null, timestamps/dates -> ISO strings, numpy scalars -> Python scalars."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    return value


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: json_value(v) for k, v in record.items()} for record in frame.to_dict(orient="records")]
