"""Reference: the ETL's cleaning in plain pandas (pyarrow CSV engine), all in memory.

python pandas_clean.py RAW.csv OUT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import BOOLEANS, CATEGORIES, DATES, FALSE_WORDS, NUMBERS, SCHEMA, TRUE_WORDS, report


def _flag(mask: pd.Series) -> np.ndarray:
    return mask.fillna(False).to_numpy(dtype=bool)


def main(source: str, out_dir: str) -> None:
    started = time.perf_counter()
    raw = pd.read_csv(source, dtype="string[pyarrow]", engine="pyarrow")
    clean = pd.DataFrame({SCHEMA.id_column: raw[SCHEMA.id_column].str.strip()})
    reason = pd.Series(np.where(raw[SCHEMA.target].isna(), f"{SCHEMA.target}: missing target", None), dtype=object)
    for spec in NUMBERS:
        text = raw[spec.name].str.strip()
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        bad = (text.notna() & values.isna()) | (values < spec.min) | (values > spec.max)
        if spec.type == "integer":
            bad |= values.notna() & (values % 1 != 0)
        reason = reason.where(reason.notna() | ~_flag(bad), f"{spec.name}: invalid")
        clean[spec.name] = values
    for spec in CATEGORIES:
        text = raw[spec.name].str.strip()
        bad = text.notna() & ~text.isin(spec.categories)
        reason = reason.where(reason.notna() | ~_flag(bad), f"{spec.name}: unknown category")
        clean[spec.name] = text
    for spec in BOOLEANS:
        text = raw[spec.name].str.strip().str.lower()
        values = text.astype(object).map(dict.fromkeys(TRUE_WORDS, True) | dict.fromkeys(FALSE_WORDS, False))
        reason = reason.where(reason.notna() | ~_flag(text.notna() & values.isna()), f"{spec.name}: not a boolean")
        clean[spec.name] = values
    for spec in DATES:
        text = raw[spec.name].str.strip()
        values = pd.to_datetime(text, errors="coerce", format="ISO8601")
        reason = reason.where(reason.notna() | ~_flag(text.notna() & values.isna()), f"{spec.name}: not an ISO date")
        clean[spec.name] = values
    clean[SCHEMA.target] = pd.to_numeric(raw[SCHEMA.target], errors="coerce").astype("float64")

    bad = reason.notna().to_numpy()
    raw[bad].assign(_reason=reason[bad]).to_csv(Path(out_dir) / "quarantine.csv", index=False)
    clean = clean[~bad].drop_duplicates().reset_index(drop=True)
    for spec in NUMBERS:
        clean[spec.name] = clean[spec.name].fillna(clean[spec.name].median())
        if spec.type == "integer":
            clean[spec.name] = clean[spec.name].astype("int64")
    for spec in CATEGORIES + BOOLEANS:
        clean[spec.name] = clean[spec.name].fillna(clean[spec.name].mode().iloc[0])
    clean[[s.name for s in BOOLEANS]] = clean[[s.name for s in BOOLEANS]].astype(bool)
    for spec in DATES:
        dates = clean[spec.name]
        clean[spec.name] = dates.fillna(dates.dropna().sort_values().iloc[dates.notna().sum() // 2])
        for part in ("year", "month", "dayofweek", "dayofyear"):
            clean[f"{spec.name}_{part}"] = getattr(clean[spec.name].dt, part).astype("float64")
    clean[SCHEMA.target] = clean[SCHEMA.target].astype("int64")
    clean.to_parquet(Path(out_dir) / "features.parquet", index=False)
    report(started, rows_out=len(clean), rows_quarantined=int(bad.sum()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
