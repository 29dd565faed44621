"""Reference: the ETL's cleaning in DuckDB SQL (multithreaded, spills to disk when it must).

python duckdb_clean.py RAW.csv OUT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb
from _common import BOOLEANS, CATEGORIES, DATES, FALSE_WORDS, NUMBERS, SCHEMA, TRUE_WORDS, report


def _words(words: list[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def main(source: str, out_dir: str) -> None:
    started = time.perf_counter()
    db = duckdb.connect()
    typed = [f"trim({SCHEMA.id_column}) AS {SCHEMA.id_column}"]
    checks = [f"WHEN {SCHEMA.target} IS NULL THEN '{SCHEMA.target}: missing target'"]
    for spec in NUMBERS:
        value = f"TRY_CAST(trim({spec.name}) AS DOUBLE)"
        bad = f"({spec.name} IS NOT NULL AND {value} IS NULL) OR {value} < {spec.min} OR {value} > {spec.max}"
        if spec.type == "integer":
            bad += f" OR {value} % 1 <> 0"
        checks.append(f"WHEN {bad} THEN '{spec.name}: invalid'")
        typed.append(f"{value} AS {spec.name}")
    for spec in CATEGORIES:
        allowed = _words(spec.categories or [])
        checks.append(f"WHEN trim({spec.name}) NOT IN ({allowed}) THEN '{spec.name}: unknown category'")
        typed.append(f"trim({spec.name}) AS {spec.name}")
    for spec in BOOLEANS:
        lowered = f"lower(trim({spec.name}))"
        value = (
            f"CASE WHEN {lowered} IN ({_words(TRUE_WORDS)}) THEN true "
            f"WHEN {lowered} IN ({_words(FALSE_WORDS)}) THEN false END"
        )
        checks.append(f"WHEN {spec.name} IS NOT NULL AND ({value}) IS NULL THEN '{spec.name}: not a boolean'")
        typed.append(f"{value} AS {spec.name}")
    for spec in DATES:
        value = f"TRY_CAST(trim({spec.name}) AS DATE)"
        checks.append(f"WHEN {spec.name} IS NOT NULL AND {value} IS NULL THEN '{spec.name}: not an ISO date'")
        typed.append(f"{value} AS {spec.name}")
    typed.append(f"TRY_CAST({SCHEMA.target} AS BIGINT) AS {SCHEMA.target}")

    db.execute(
        f"CREATE TABLE raw AS SELECT *, CASE {' '.join(checks)} END AS _reason "
        f"FROM read_csv('{source}', all_varchar = true)"
    )
    db.execute(f"COPY (SELECT * FROM raw WHERE _reason IS NOT NULL) TO '{Path(out_dir) / 'quarantine.csv'}'")
    db.execute(f"CREATE TABLE clean AS SELECT DISTINCT {', '.join(typed)} FROM raw WHERE _reason IS NULL")
    fills = [f"coalesce({s.name}, (SELECT median({s.name}) FROM clean)) AS {s.name}" for s in NUMBERS]
    fills += [f"coalesce({s.name}, (SELECT mode({s.name}) FROM clean)) AS {s.name}" for s in CATEGORIES + BOOLEANS]
    fills += [f"coalesce({s.name}, (SELECT quantile_disc({s.name}, 0.5) FROM clean)) AS {s.name}" for s in DATES]
    parts = [
        f"CAST({fn}(coalesce({s.name}, (SELECT quantile_disc({s.name}, 0.5) FROM clean))) AS DOUBLE) AS {s.name}_{part}"
        for s in DATES
        for part, fn in (("year", "year"), ("month", "month"), ("dayofweek", "isodow"), ("dayofyear", "dayofyear"))
        if part != "dayofweek"
    ] + [
        f"CAST(isodow(coalesce({s.name}, (SELECT quantile_disc({s.name}, 0.5) FROM clean))) - 1 AS DOUBLE)"
        f" AS {s.name}_dayofweek"
        for s in DATES
    ]
    db.execute(
        f"COPY (SELECT {SCHEMA.id_column}, {', '.join(fills + parts)}, {SCHEMA.target} FROM clean) "
        f"TO '{Path(out_dir) / 'features.parquet'}' (FORMAT parquet)"
    )
    rows_out = db.execute("SELECT count(*) FROM clean").fetchone()[0]
    quarantined = db.execute("SELECT count(*) FROM raw WHERE _reason IS NOT NULL").fetchone()[0]
    report(started, rows_out=rows_out, rows_quarantined=quarantined)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
