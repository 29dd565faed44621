"""Text to numbers as pandas reads it (``pd.to_numeric(..., errors="coerce")``), minus its crash.

pandas 2.3's parser keeps a decimal exponent in a C int: ``"1e277716837487"`` kills the process (SIGSEGV) and
``"1e4294967296"`` wraps round to 1.0. Every exponent of seven or more digits is read as 999999 (same sign), which
overflows the same way the real one does (NaN for a huge number, 0.0 for a tiny one), before pandas sees it. Only
a value with about a million mantissa digits could read differently, and no table cell is that long.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_LONG_DIGITS = r"0*[1-9][0-9]{6,}"  # leading zeros do not count: 1e+0000012 is 1e12
_HAS_LONG_EXPONENT = rf"[eE][+-]?{_LONG_DIGITS}"  # no group: str.contains warns about one
_LONG_EXPONENT = rf"([eE][+-]?){_LONG_DIGITS}"
_CLAMPED = r"\g<1>999999"


def to_numeric(values: Any) -> pd.Series:
    """``values`` (text, numbers or a mix) as float64, NaN where a value is not a number."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    if series.dtype.kind not in "biufc" and len(series):  # numbers need no care: no float has such an exponent
        long = series.astype("string").str.contains(_HAS_LONG_EXPONENT, regex=True, na=False).to_numpy(dtype=bool)
        if long.any():
            series = series.astype(object).copy()
            series[long] = series[long].astype(str).str.replace(_LONG_EXPONENT, _CLAMPED, regex=True)
    return pd.to_numeric(series, errors="coerce").astype("float64")


def to_float_array(values: Any) -> np.ndarray:
    """:func:`to_numeric` as a numpy array."""
    return to_numeric(values).to_numpy(dtype=np.float64, na_value=np.nan)
