"""Reference: the ETL's cleaning in polars (multithreaded, all in memory).

python polars_clean.py RAW.csv OUT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl
from _common import BOOLEANS, CATEGORIES, DATES, FALSE_WORDS, NUMBERS, SCHEMA, TRUE_WORDS, report


def main(source: str, out_dir: str) -> None:
    started = time.perf_counter()
    raw = pl.read_csv(source, infer_schema=False)
    text = {name: pl.col(name).str.strip_chars() for name in raw.columns}
    typed: list[pl.Expr] = [text[SCHEMA.id_column].alias(SCHEMA.id_column)]
    checks: list[tuple[pl.Expr, str]] = [(pl.col(SCHEMA.target).is_null(), f"{SCHEMA.target}: missing target")]
    for spec in NUMBERS:
        values = text[spec.name].cast(pl.Float64, strict=False)
        bad = (text[spec.name].is_not_null() & values.is_null()) | (values < spec.min) | (values > spec.max)
        if spec.type == "integer":
            bad = bad | (values % 1 != 0)
        checks.append((bad.fill_null(False), f"{spec.name}: invalid"))
        typed.append(values.alias(spec.name))
    for spec in CATEGORIES:
        checks.append(
            (text[spec.name].is_not_null() & ~text[spec.name].is_in(spec.categories), f"{spec.name}: unknown")
        )
        typed.append(text[spec.name].alias(spec.name))
    for spec in BOOLEANS:
        lowered = text[spec.name].str.to_lowercase()
        values = pl.when(lowered.is_in(TRUE_WORDS)).then(True).when(lowered.is_in(FALSE_WORDS)).then(False)
        checks.append((lowered.is_not_null() & values.is_null(), f"{spec.name}: not a boolean"))
        typed.append(values.alias(spec.name))
    for spec in DATES:
        values = text[spec.name].str.to_date("%Y-%m-%d", strict=False)
        checks.append((text[spec.name].is_not_null() & values.is_null(), f"{spec.name}: not an ISO date"))
        typed.append(values.alias(spec.name))
    typed.append(pl.col(SCHEMA.target).cast(pl.Int64, strict=False))
    reason = pl.lit(None, pl.String)
    for bad, why in reversed(checks):
        reason = pl.when(bad).then(pl.lit(why)).otherwise(reason)

    frame = raw.with_columns(reason.alias("_reason"))
    quarantined = frame.filter(pl.col("_reason").is_not_null())
    quarantined.write_csv(Path(out_dir) / "quarantine.csv")
    clean = frame.filter(pl.col("_reason").is_null()).select(typed).unique(maintain_order=True)
    fills = [pl.col(s.name).fill_null(pl.col(s.name).median()) for s in NUMBERS]
    fills += [
        pl.col(s.name).fill_null(pl.col(s.name).drop_nulls().mode().sort().first()) for s in CATEGORIES + BOOLEANS
    ]
    fills += [
        pl.col(s.name).fill_null(pl.col(s.name).drop_nulls().sort().gather(pl.col(s.name).count() // 2)) for s in DATES
    ]
    clean = clean.with_columns(fills).with_columns(
        [pl.col(s.name).cast(pl.Int64) for s in NUMBERS if s.type == "integer"]
        + [
            part.cast(pl.Float64).alias(f"{s.name}_{name}")
            for s in DATES
            for name, part in (
                ("year", pl.col(s.name).dt.year()),
                ("month", pl.col(s.name).dt.month()),
                ("dayofweek", pl.col(s.name).dt.weekday() - 1),  # pandas counts Monday as 0
                ("dayofyear", pl.col(s.name).dt.ordinal_day()),
            )
        ]
    )
    clean.write_parquet(Path(out_dir) / "features.parquet")
    report(started, rows_out=clean.height, rows_quarantined=quarantined.height)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
