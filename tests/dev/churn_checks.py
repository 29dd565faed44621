"""Checks on churn data shared by the generator and data-source tests: independent of the code under test."""

from __future__ import annotations

import pandas as pd

from mlpipeline.config import default_schema

CLEAN = {"missing_rate": 0.0, "malformed_rate": 0.0, "duplicate_rate": 0.0}


def invalid_rows(frame: pd.DataFrame) -> pd.Series:
    """Rows an ETL validating against default_schema() must reject (an independent re-implementation)."""
    schema = default_schema()
    bad = pd.Series(False, index=frame.index)
    for spec in schema.columns:
        text = frame[spec.name].astype("string")
        present = text.notna()
        if spec.type in ("integer", "numeric"):
            number = pd.to_numeric(text, errors="coerce")
            wrong = present & number.isna()
            wrong |= number.notna() & ((spec.min is not None) & (number < spec.min))
            wrong |= number.notna() & ((spec.max is not None) & (number > spec.max))
            if spec.type == "integer":
                wrong |= number.notna() & (number != number.round())
        elif spec.type == "categorical":
            wrong = present & ~text.isin(spec.categories or [])
        elif spec.type == "boolean":
            wrong = present & ~text.isin(["true", "false"])
        else:
            wrong = present & pd.to_datetime(text, format="%Y-%m-%d", errors="coerce").isna()
        bad |= wrong.fillna(False).astype(bool)
    target = frame[schema.target].astype("string")
    bad |= (target.isna() | ~target.isin(["0", "1"])).fillna(True).astype(bool)
    return bad
