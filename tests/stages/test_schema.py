"""Schema inference from raw snapshots (generated data and real public datasets), and freezing it per source."""

from __future__ import annotations

import csv
import importlib.resources
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.config import ColumnSpec, DatasetSchema, build_config
from mlpipeline.stages.etl.coerce import coerce_column
from mlpipeline.stages.schema import (
    SchemaError,
    _freeze,
    frozen_schema_path,
    infer_schema,
    read_sample,
    resolve_schema,
    schema_json,
)


def package_file(package: str, *parts: str) -> str:
    return str(importlib.resources.files(package).joinpath(*parts))


PENGUINS = package_file("palmerpenguins", "data", "penguins-raw.csv")
SEATTLE = package_file("vega_datasets", "_data", "seattle-weather.csv")
IRIS = package_file("sklearn", "datasets", "data", "iris.csv")


def types_of(schema: DatasetSchema) -> dict[str, str]:
    return {column.name: column.type for column in schema.resolved_columns()}


def assert_etl_accepts(path: str, fmt: str, schema: DatasetSchema) -> None:
    """Every inferred column, typed by the ETL's own coercion over the sample, has no bad value."""
    sample = read_sample(path, fmt, 100_000)
    for spec in schema.resolved_columns():
        typed = coerce_column(sample.column(spec.name).combine_chunks(), spec)
        bad = sample.column(spec.name).filter(pa.array(typed.codes != 0)).to_pylist()
        assert bad == [], (spec.name, spec.type, bad[:5])


# --- real datasets --------------------------------------------------------------------------------------------------


def test_penguins_raw_names_types_and_reasons() -> None:
    schema, excluded = infer_schema(PENGUINS, "csv", target="Species")

    assert types_of(schema) == {
        "studyName": "categorical",
        "Island": "categorical",
        "Clutch Completion": "boolean",
        "Date Egg": "date",
        "Culmen Length (mm)": "numeric",
        "Culmen Depth (mm)": "numeric",
        "Flipper Length (mm)": "integer",
        "Body Mass (g)": "integer",
        "Sex": "categorical",
        "Delta 15 N (o/oo)": "numeric",
        "Delta 13 C (o/oo)": "numeric",
    }
    assert list(excluded) == ["Sample Number", "Species", "Region", "Stage", "Individual ID", "Comments"]
    assert excluded["Species"] == "the target"
    assert excluded["Sample Number"].startswith("id-like: counts rows")  # 1..152 within each study
    assert excluded["Individual ID"] == "id-like: 190 distinct values in 344 rows"
    assert excluded["Region"] == "constant: every value is 'Anvers'"
    assert excluded["Stage"] == "constant: every value is 'Adult, 1 Egg Stage'"
    assert excluded["Comments"].startswith("free text:")
    # Categories are open: nothing that would refuse a new value later.
    assert all(c.categories is None and c.min is None and c.max is None for c in schema.resolved_columns())
    assert (schema.target, schema.id_column, schema.positive_label, schema.exclude) == ("Species", None, None, [])
    assert_etl_accepts(PENGUINS, "csv", schema)


def test_penguins_with_id_column_exclusions_and_label_as_given() -> None:
    schema, excluded = infer_schema(
        PENGUINS,
        "csv",
        target="Sex",
        id_column="Individual ID",
        exclude=["Delta 15 N (o/oo)", "Comments"],
        positive_label="FEMALE",
    )
    assert (schema.target, schema.id_column, schema.positive_label) == ("Sex", "Individual ID", "FEMALE")
    assert schema.exclude == ["Delta 15 N (o/oo)", "Comments"]
    assert excluded["Individual ID"] == "the id column"
    assert excluded["Delta 15 N (o/oo)"] == excluded["Comments"] == "listed in dataset_schema.exclude"
    assert types_of(schema)["Species"] == "categorical"
    assert "Delta 15 N (o/oo)" not in types_of(schema)


def test_seattle_weather_slash_dates_are_dates_the_etl_parses() -> None:
    schema, excluded = infer_schema(SEATTLE, "csv", target="weather")

    assert types_of(schema) == {
        "date": "date",  # 2012/01/01: unique per row, but a date, not an id
        "precipitation": "numeric",
        "temp_max": "numeric",
        "temp_min": "numeric",
        "wind": "numeric",
    }
    assert excluded == {"weather": "the target"}
    assert_etl_accepts(SEATTLE, "csv", schema)


def test_sklearn_iris_number_headers_are_kept_as_names() -> None:
    # sklearn's iris.csv header is "150,4,setosa,versicolor,virginica" (counts and class names, not column names).
    schema, excluded = infer_schema(IRIS, "csv", target="virginica")
    assert types_of(schema) == {"150": "numeric", "4": "numeric", "setosa": "numeric", "versicolor": "numeric"}
    assert excluded == {"virginica": "the target"}


def test_every_reason_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlpipeline.stages.schema"):
        _, excluded = infer_schema(PENGUINS, "csv", target="Species")
    for name, reason in excluded.items():
        assert f"column {name!r} left out: {reason}" in caplog.messages


# --- generated data -------------------------------------------------------------------------------------------------

ROWS = 200


def generated_columns() -> dict[str, list[str]]:
    """Columns as text cells, one kind of column each (deterministic)."""
    rng = np.random.default_rng(3)
    n = ROWS
    sparse = [str(v) if i % 10 < 3 else "" for i, v in enumerate(rng.integers(0, 9, n))]
    return {
        "row": [str(i + 1) for i in range(n)],
        "account": [str(v) for v in rng.permutation(1_000_000)[:n]],
        "age": [["NA", ""][i % 2] if i % 17 == 0 else str(v) for i, v in enumerate(rng.integers(18, 90, n))],
        "income (k$)": [
            ["null", "NaN", "?"][i % 3] if i % 13 == 0 else f"{v:.2f}" for i, v in enumerate(rng.normal(50, 9, n))
        ],
        "flag_01": [str(v) for v in rng.integers(0, 2, n)],
        "active": [["yes", "no", "Yes", "NO"][v] for v in rng.integers(0, 4, n)],
        "verified": ["" if i % 9 == 0 else ["true", "false"][v] for i, v in enumerate(rng.integers(0, 2, n))],
        "signup": [f"2012-{1 + i % 12:02d}-{1 + i % 28:02d}" if i % 11 else "" for i in range(n)],
        "seen_at": [f"2020-03-{1 + i % 28:02d}T{i % 24:02d}:15:00Z" for i in range(n)],
        "eu_date": [f"{1 + i % 28:02d}/{1 + i % 12:02d}/2012" for i in range(n)],
        "plan": [["basic", "pro", "team"][v] for v in rng.integers(0, 3, n)],
        "city": [f"city-{v}" for v in rng.integers(0, 70, n)],
        "uuid": [f"{v:012x}" for v in rng.integers(0, 2**48, n)],
        "notes": [f"customer called about the invoice number {i} and asked for a refund" for i in range(n)],
        "empty": ["" for _ in range(n)],
        "constant": ["x" for _ in range(n)],
        "sparse": sparse,
        "cust_id": [f"C{i:05d}" for i in range(n)],
        "dropped": [str(v) for v in rng.normal(size=n)],
        "label": [str(v) for v in rng.integers(0, 2, n)],
    }


GENERATED_TYPES = {
    "account": "integer",  # unique, but not a row counter
    "age": "integer",
    "income (k$)": "numeric",
    "flag_01": "integer",  # 0/1 are numbers first
    "active": "boolean",
    "verified": "boolean",
    "signup": "date",
    "seen_at": "date",
    "plan": "categorical",
}


def write_csv(path: Path, columns: dict[str, list[str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    return str(path)


def infer_generated(path: str, fmt: str) -> tuple[DatasetSchema, dict[str, str]]:
    return infer_schema(path, fmt, target="label", id_column="cust_id", exclude=["dropped"])


def test_generated_csv_types_and_reasons(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", generated_columns())
    schema, excluded = infer_generated(path, "csv")

    assert types_of(schema) == GENERATED_TYPES
    assert list(types_of(schema)) == [n for n in generated_columns() if n in GENERATED_TYPES]  # source order
    assert excluded["row"].startswith("id-like: counts rows")
    assert excluded["uuid"] == f"id-like: {ROWS} distinct values in {ROWS} rows"
    assert excluded["city"].startswith("too many distinct values for a category:")
    assert excluded["eu_date"].startswith("dates in a format the ETL does not parse (e.g. '01/01/2012')")
    assert excluded["notes"].startswith("free text:")
    assert excluded["empty"] == "empty: no value in the sampled rows"
    assert excluded["constant"] == "constant: every value is 'x'"
    assert excluded["sparse"].startswith("mostly empty: 70.0% of the values are missing")
    assert excluded["cust_id"] == "the id column"
    assert excluded["dropped"] == "listed in dataset_schema.exclude"
    assert excluded["label"] == "the target"
    assert len(excluded) + len(GENERATED_TYPES) == len(generated_columns())


def test_question_marks_count_as_missing(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", generated_columns())
    schema, _ = infer_generated(path, "csv")
    assert types_of(schema)["income (k$)"] == "numeric"  # its "?" cells are missing values, as in the ETL


def test_same_snapshot_same_schema(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", generated_columns())
    first = infer_generated(path, "csv")
    second = infer_generated(path, "csv")
    assert schema_json(first[0]) == schema_json(second[0]) and first[1] == second[1]


def test_jsonl_and_parquet_snapshots_infer_like_csv(tmp_path: Path) -> None:
    columns = generated_columns()
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()}), parquet)

    assert types_of(infer_generated(str(parquet), "parquet")[0]) == GENERATED_TYPES
    # Arrow's JSON reader puts the timestamp-looking columns it re-reads as text first: same types, other order.
    for fmt in ("jsonl", "json_api"):  # the crawl stores API pages as JSON lines
        schema, excluded = infer_generated(str(jsonl), fmt)
        assert types_of(schema) == GENERATED_TYPES
        assert excluded == infer_generated(str(parquet), "parquet")[1]


def test_native_parquet_types(tmp_path: Path) -> None:
    n = 120
    rng = np.random.default_rng(5)
    table = pa.table(
        {
            "count": pa.array(rng.integers(0, 50, n)),
            "ratio": pa.array(rng.random(n)),
            "ok": pa.array(rng.integers(0, 2, n).astype(bool)),
            "when": pa.array(np.datetime64("2021-01-01") + rng.integers(0, 900, n).astype("timedelta64[D]")),
            "at": pa.array(np.datetime64("2021-01-01T00:00:00") + rng.integers(0, 10**7, n).astype("timedelta64[s]")),
            "y": pa.array(rng.normal(size=n)),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    schema, excluded = infer_schema(str(path), "parquet", target="y")
    assert types_of(schema) == {"count": "integer", "ratio": "numeric", "ok": "boolean", "when": "date", "at": "date"}
    assert excluded == {"y": "the target"}
    assert_etl_accepts(str(path), "parquet", schema)


def test_only_the_first_sample_rows_are_read(tmp_path: Path) -> None:
    # The one value that makes "code" text comes after the first 100 rows.
    numbers = {"code": [str(i % 7) for i in range(100)] + ["x"], "y": ["0", "1"] * 50 + ["1"]}
    path = write_csv(tmp_path / "numbers.csv", numbers)
    assert types_of(infer_schema(path, "csv", target="y", sample_rows=100)[0]) == {"code": "integer"}
    assert types_of(infer_schema(path, "csv", target="y")[0]) == {"code": "categorical"}


def test_csv_arrow_refuses_is_read_like_the_etl(tmp_path: Path) -> None:
    # A blank header name: Arrow gives up, pandas (as in the ETL) calls the column "Unnamed: 1".
    path = tmp_path / "data.csv"
    path.write_text("a,,y\n" + "".join(f"{i % 5},{i % 3}.5,{i % 2}\n" for i in range(40)))
    schema, _ = infer_schema(str(path), "csv", target="y")
    assert types_of(schema) == {"a": "integer", "Unnamed: 1": "numeric"}


def test_time_zone_mixes_are_dates_only_if_the_etl_parses_them(tmp_path: Path) -> None:
    stamps = ["2020-01-01T10:00:00", "2020-01-02T10:00:00Z", "2020-01-03T10:00:00+02:00"]
    columns = {"at": [stamps[i % 3] for i in range(60)], "x": [str(i % 4) for i in range(60)], "y": ["0", "1"] * 30}
    path = write_csv(tmp_path / "data.csv", columns)
    schema, excluded = infer_schema(path, "csv", target="y")
    try:  # the ETL's own verdict on these values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' note on mixed time zones
            parsed = (coerce_column(pa.array(stamps), ColumnSpec(name="at", type="date")).codes == 0).all()
    except Exception:
        parsed = False
    if parsed:
        assert types_of(schema) == {"at": "date", "x": "integer"}
    else:
        assert types_of(schema) == {"x": "integer"}
        assert excluded["at"].startswith("dates the ETL cannot parse together")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "nope"}, "the target 'nope' is not a column of the snapshot"),
        ({"target": "y", "id_column": "nope"}, "the id column 'nope' is not a column of the snapshot"),
        ({"target": "y", "exclude": ["a"]}, "no column of the snapshot can be a feature"),
    ],
)
def test_refusals(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    path = write_csv(tmp_path / "data.csv", {"a": [str(i) for i in range(30)], "y": ["0", "1"] * 15})
    with pytest.raises(SchemaError, match=message):
        infer_schema(path, "csv", **kwargs)


def test_duplicate_header_and_unreadable_snapshot_are_refused(tmp_path: Path) -> None:
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("a,a,y\n1,2,0\n")
    with pytest.raises(SchemaError, match=r"names these columns more than once: \['a'\]"):
        infer_schema(str(duplicate), "csv", target="y")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="cannot read the raw snapshot"):
        infer_schema(str(broken), "parquet", target="y")


# --- freezing ---------------------------------------------------------------------------------------------------------


def config_for(tmp_path: Path, **schema: Any) -> Any:
    return build_config(
        {
            "crawl_url": "http://127.0.0.1:9/data.csv",
            "data_dir": str(tmp_path / "data"),
            "dataset_schema": {"target": "label", "id_column": "cust_id", "exclude": ["dropped"], **schema},
        }
    )


def test_declared_columns_are_used_unchanged(tmp_path: Path) -> None:
    config = build_config({"data_dir": str(tmp_path / "data")})  # the churn demo's declared schema
    assert resolve_schema(config, "/nonexistent.csv", "csv") == (config.dataset_schema, {})
    assert not (tmp_path / "data").exists()


def test_first_run_freezes_later_runs_reuse(tmp_path: Path) -> None:
    columns = generated_columns()
    first_snapshot = write_csv(tmp_path / "first.csv", columns)
    config = config_for(tmp_path)

    schema, excluded = resolve_schema(config, first_snapshot, "csv")
    assert types_of(schema) == GENERATED_TYPES
    assert excluded == infer_generated(first_snapshot, "csv")[1]
    frozen = frozen_schema_path(config)
    assert frozen.parent == tmp_path / "data" / "schemas" and len(frozen.stem) == 64

    # A later snapshot where "plan" became numbers and "age" text: the frozen types still hold.
    changed = {**columns, "plan": [str(i) for i in range(ROWS)], "age": ["unknown"] * ROWS}
    later_snapshot = write_csv(tmp_path / "later.csv", changed)
    assert resolve_schema(config, later_snapshot, "csv") == (schema, excluded)
    assert types_of(infer_generated(later_snapshot, "csv")[0]) != GENERATED_TYPES  # inference alone would flip


def test_frozen_file_is_what_the_variable_takes(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    schema, _ = resolve_schema(config, write_csv(tmp_path / "data.csv", generated_columns()), "csv")
    text = frozen_schema_path(config).read_text()
    pasted = build_config({"dataset_schema": text})  # a Variable holds the JSON text
    assert pasted.dataset_schema == schema
    assert json.loads(text) == schema_json(schema)
    assert json.loads(text)["columns"][0] == {"name": "account", "type": "integer"}  # defaults left out
    # Declared from now on: used as is.
    assert resolve_schema(pasted, "/nonexistent.csv", "csv") == (schema, {})


def test_key_names_source_target_id_and_exclusions_not_the_label(tmp_path: Path) -> None:
    base = frozen_schema_path(config_for(tmp_path))
    assert frozen_schema_path(config_for(tmp_path, exclude=["dropped"])) == base
    assert frozen_schema_path(config_for(tmp_path, positive_label="1")) == base
    for other in ({"target": "age"}, {"id_column": None}, {"exclude": ["dropped", "plan"]}):
        assert frozen_schema_path(config_for(tmp_path, **other)) != base
    moved = config_for(tmp_path).model_copy(update={"crawl_url": "http://127.0.0.1:9/other.csv"})
    assert frozen_schema_path(moved) != base

    snapshot = write_csv(tmp_path / "data.csv", generated_columns())
    resolve_schema(config_for(tmp_path), snapshot, "csv")
    relabelled, _ = resolve_schema(config_for(tmp_path, positive_label="1"), snapshot, "csv")
    assert relabelled.positive_label == "1"  # the setting as it is now


def test_first_freeze_wins(tmp_path: Path) -> None:
    path = tmp_path / "schemas" / "k.json"
    assert _freeze(path, {"target": "a", "columns": [{"name": "x", "type": "integer"}]})
    assert not _freeze(path, {"target": "a", "columns": [{"name": "x", "type": "numeric"}]})
    assert json.loads(path.read_text())["columns"][0]["type"] == "integer"
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]  # no temp file left


def test_broken_frozen_file_is_refused_naming_it(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    frozen = frozen_schema_path(config)
    frozen.parent.mkdir(parents=True)
    frozen.write_text('{"target": "label", "columns": [{"name": "x", "type": "text"}]}')
    with pytest.raises(SchemaError, match="delete it to infer again") as refused:
        resolve_schema(config, write_csv(tmp_path / "data.csv", generated_columns()), "csv")
    assert str(frozen) in str(refused.value)
