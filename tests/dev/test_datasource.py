"""The bundled churn dataset and its HTTP service, exercised for real over 127.0.0.1."""

from __future__ import annotations

import email.utils
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from mlpipeline.config import default_schema
from mlpipeline.dev.datasource import (
    BROKEN_CSV,
    COLUMNS,
    FEATURE_COLUMNS,
    DataSourceServer,
    generate_churn_dataset,
    serialize,
)

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


def psi(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    if reference.dtype == "string" and pd.to_numeric(reference, errors="coerce").isna().mean() > 0.5:
        categories = sorted(set(reference.dropna()) | set(current.dropna()))
        ref = reference.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
        cur = current.value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
    else:
        ref_values = pd.to_numeric(reference, errors="coerce").dropna().to_numpy(float)
        cur_values = pd.to_numeric(current, errors="coerce").dropna().to_numpy(float)
        edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        ref = np.histogram(ref_values, edges)[0] / len(ref_values)
        cur = np.histogram(cur_values, edges)[0] / len(cur_values)
    ref, cur = np.clip(ref, 1e-6, None), np.clip(cur, 1e-6, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


# --- generator ------------------------------------------------------------------------------------------------


def test_columns_match_the_default_schema() -> None:
    schema = default_schema()
    frame = generate_churn_dataset(50)
    assert list(FEATURE_COLUMNS) == schema.feature_names
    assert list(frame.columns) == [schema.id_column, *schema.feature_names, schema.target] == list(COLUMNS)


def test_deterministic_for_the_same_arguments_and_seed_sensitive() -> None:
    first = generate_churn_dataset(3000, seed=11, drift=True, malformed_rate=0.05)
    again = generate_churn_dataset(3000, seed=11, drift=True, malformed_rate=0.05)
    pd.testing.assert_frame_equal(first, again)
    other = generate_churn_dataset(3000, seed=12, drift=True, malformed_rate=0.05)
    assert not first.equals(other)
    assert serialize(first, "csv") == serialize(again, "csv")


@pytest.mark.parametrize("rows", [0, 1, 7, 1000, 4321])
def test_exact_row_count(rows: int) -> None:
    frame = generate_churn_dataset(rows, duplicate_rate=0.05)
    assert frame.shape == (rows, len(COLUMNS))
    assert frame.index.equals(pd.RangeIndex(rows))


def test_clean_rows_respect_the_schema_and_churn_is_realistic() -> None:
    frame = generate_churn_dataset(20_000, seed=3, **CLEAN)
    assert not invalid_rows(frame).any()
    assert not frame.isna().any().any()
    assert frame["customer_id"].is_unique
    assert 0.25 <= frame["churned"].mean() <= 0.35
    assert frame["age"].between(18, 100).all()
    assert set(frame["contract"]) == {"month-to-month", "one_year", "two_year"}
    assert set(frame["paperless_billing"]) == {"true", "false"}
    dates = pd.to_datetime(frame["signup_date"], format="%Y-%m-%d")
    assert dates.max() <= pd.Timestamp("2025-06-30")


def test_dirty_data_knobs() -> None:
    rows = 20_000
    frame = generate_churn_dataset(rows, seed=5, missing_rate=0.05, malformed_rate=0.02, duplicate_rate=0.03)
    # Blank cells: ~5 % of feature cells (malformed overrides move it by a hair).
    assert 0.045 <= frame[list(FEATURE_COLUMNS)].isna().to_numpy().mean() <= 0.055
    # Malformed rows: ~2 % of rows are rejectable, and only because of malformation (not blanks).
    invalid = invalid_rows(frame)
    assert 0.015 <= invalid.mean() <= 0.025
    assert frame["churned"].isna().sum() <= invalid.sum()
    # Exact duplicates: precisely the requested count.
    assert frame.duplicated().sum() == round(0.03 * rows)
    assert frame["customer_id"].duplicated().sum() == round(0.03 * rows)

    blanks_only = generate_churn_dataset(5000, seed=5, missing_rate=0.3, malformed_rate=0.0, duplicate_rate=0.0)
    assert not invalid_rows(blanks_only).any()  # blank feature cells are allowed (nullable) ...
    assert blanks_only["churned"].notna().all()  # ... and never hit the target
    assert not invalid_rows(generate_churn_dataset(5000, **CLEAN)).any()


def test_every_kind_of_malformation_occurs() -> None:
    frame = generate_churn_dataset(5000, seed=9, malformed_rate=0.2, missing_rate=0.0, duplicate_rate=0.0)
    numeric = ["age", "tenure_months", "monthly_charges", "total_charges", "support_tickets", "data_usage_gb"]
    as_numbers = {name: pd.to_numeric(frame[name].astype("string"), errors="coerce") for name in numeric}
    assert any(as_numbers[name].isna().any() for name in numeric), "text in a numeric column"
    assert (as_numbers["age"] < 0).any() and (as_numbers["age"] > 100).any()
    assert (as_numbers["monthly_charges"] < 0).any()
    assert frame["churned"].isna().any()
    unknown = {
        name: set(frame[name].dropna()) - set(spec.categories or ["true", "false"])
        for spec in default_schema().columns
        if (name := spec.name) in ("contract", "payment_method", "internet_service", "region", "paperless_billing")
    }
    assert any(unknown.values()), unknown
    assert pd.to_datetime(frame["signup_date"], format="%Y-%m-%d", errors="coerce").isna().any()
    # Nothing the CSV reader would silently turn into "missing" instead of "malformed".
    csv_text = pd.read_csv(io.BytesIO(serialize(frame, "csv")), dtype=str, keep_default_na=True)
    assert invalid_rows(csv_text).sum() == invalid_rows(frame).sum()


def test_drift_shifts_distributions() -> None:
    reference = generate_churn_dataset(20_000, seed=1)
    drifted = generate_churn_dataset(20_000, seed=2, drift=True)
    same = generate_churn_dataset(20_000, seed=2)
    for column in ("age", "monthly_charges", "contract"):
        assert psi(reference[column], drifted[column]) > 0.2, column
        assert psi(reference[column], same[column]) < 0.05, column
    assert psi(reference["region"], drifted["region"]) < 0.05
    charges = pd.to_numeric(drifted["monthly_charges"], errors="coerce").median()
    assert charges > 1.2 * pd.to_numeric(reference["monthly_charges"], errors="coerce").median()


def test_target_is_learnable_but_not_trivial() -> None:
    frame = generate_churn_dataset(20_000, seed=21, **CLEAN)
    features = frame[list(FEATURE_COLUMNS)].drop(columns="signup_date").copy()
    for name in ("contract", "payment_method", "internet_service", "region", "paperless_billing"):
        features[name] = features[name].astype("category").cat.codes
    x_train, x_test, y_train, y_test = train_test_split(
        features.astype(float), frame["churned"].astype(int), test_size=0.25, random_state=0
    )
    with threadpool_limits(1):  # OpenMP spin-waiting on a busy 2-core box is 10-20x slower than 1 thread
        model = HistGradientBoostingClassifier(random_state=0, max_iter=100).fit(x_train, y_train)
    accuracy = model.score(x_test, y_test)
    majority = max(y_test.mean(), 1 - y_test.mean())
    assert 0.78 <= accuracy <= 0.88
    assert accuracy > majority + 0.07  # much better than always answering "stays"


def test_a_million_rows_in_seconds() -> None:
    started = time.perf_counter()
    frame = generate_churn_dataset(1_000_000, seed=4)
    elapsed = time.perf_counter() - started
    assert len(frame) == 1_000_000
    assert elapsed < 15, f"generating 1M rows took {elapsed:.1f}s"


def test_serializers_round_trip() -> None:
    frame = generate_churn_dataset(800, seed=2, missing_rate=0.1, malformed_rate=0.1)
    expected_text = frame.astype("string")
    csv = pd.read_csv(io.BytesIO(serialize(frame, "csv")), dtype=str, keep_default_na=False, na_values=[""])
    lines = serialize(frame, "jsonl").decode().splitlines()
    jsonl = pd.DataFrame([json.loads(line) for line in lines])
    parquet = pq.read_table(io.BytesIO(serialize(frame, "parquet"))).to_pandas()
    for parsed in (csv, jsonl, parquet):
        assert list(parsed.columns) == list(COLUMNS)
        assert len(parsed) == len(frame)
    assert len(lines) == len(frame)
    # Text columns, including malformed values, arrive verbatim in all three formats.
    for column in ("customer_id", "contract", "signup_date", "paperless_billing"):
        for parsed in (csv, jsonl, parquet):
            assert parsed[column].astype("string").equals(expected_text[column]), column
    for column in ("monthly_charges", "age", "churned"):
        expected = pd.to_numeric(expected_text[column], errors="coerce")
        for parsed in (csv, jsonl, parquet):
            got = pd.to_numeric(parsed[column].astype("string"), errors="coerce")
            np.testing.assert_allclose(got.to_numpy(float), expected.to_numpy(float), equal_nan=True)
    with pytest.raises(ValueError, match="unknown format"):
        serialize(frame, "xml")


# --- HTTP service ---------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=1200, seed=7) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def test_health_files_and_content_types(server: DataSourceServer, client: httpx.Client) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    health = client.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    expected = server.dataset()
    csv = client.get(server.url + "/data.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert len(pd.read_csv(io.BytesIO(csv.content), dtype=str)) == len(expected) == 1200
    jsonl = client.get(server.url + "/data.jsonl")
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    assert len(jsonl.text.splitlines()) == 1200
    parquet = client.get(server.url + "/data.parquet")
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 1200
    for response in (csv, jsonl, parquet):
        assert response.headers["etag"].startswith('"') and response.headers["last-modified"]
        assert int(response.headers["content-length"]) == len(response.content)
    head = client.head(server.url + "/data.csv")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == csv.headers["etag"]
    assert client.get(server.url + "/nope").status_code == 404
    assert client.get(server.url + "/data.xml").status_code == 404
    assert client.get(server.url + "/").headers["content-type"].startswith("text/html")


def test_conditional_requests(server: DataSourceServer, client: httpx.Client) -> None:
    url = server.url + "/data.csv"
    first = client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert email.utils.parsedate_to_datetime(modified).timestamp() <= time.time() + 1  # not in the future
    not_modified = client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110): a stale tag means 200 even with a recent date.
    assert client.get(url, headers={"If-None-Match": '"stale"', "If-Modified-Since": modified}).status_code == 200

    server.bump_version()
    changed = client.get(url, headers={"If-None-Match": etag, "If-Modified-Since": modified})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag and changed.content != first.content
    assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 200
    later = email.utils.parsedate_to_datetime(changed.headers["last-modified"])
    assert later > email.utils.parsedate_to_datetime(modified)

    server.drift = True  # a runtime switch is a content change too
    drifted = client.get(url, headers={"If-None-Match": changed.headers["etag"]})
    assert drifted.status_code == 200 and drifted.headers["etag"] != changed.headers["etag"]

    server.conditional = False  # a naive server: no validators, never 304
    naive = client.get(url, headers={"If-None-Match": drifted.headers["etag"]})
    assert naive.status_code == 200 and "etag" not in naive.headers and "last-modified" not in naive.headers


def test_query_parameters_override_and_are_cached(server: DataSourceServer, client: httpx.Client) -> None:
    small = client.get(server.url + "/data.csv", params={"rows": 50, "seed": 3})
    assert len(pd.read_csv(io.BytesIO(small.content))) == 50
    again = client.get(server.url + "/data.csv", params={"rows": 50, "seed": 3})
    assert again.content == small.content and again.headers["etag"] == small.headers["etag"]
    direct = serialize(generate_churn_dataset(50, 3), "csv")
    assert small.content == direct  # version 0 is exactly the generator's output
    drifted = client.get(server.url + "/data.csv", params={"rows": 50, "seed": 3, "drift": 1})
    assert drifted.content != small.content
    dirty = client.get(server.url + "/data.jsonl", params={"rows": 400, "malformed_rate": 0.5, "missing_rate": 0})
    frame = pd.DataFrame([json.loads(line) for line in dirty.text.splitlines()])
    assert invalid_rows(frame).mean() > 0.3
    for bad in ({"rows": "many"}, {"rows": -1}, {"drift": "perhaps"}, {"missing_rate": 2}, {"seed": "x"}, {"seed": -1}):
        response = client.get(server.url + "/data.csv", params=bad)
        assert response.status_code == 400 and "error" in response.json()


def _records(page_rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(page_rows)


def test_cursor_pagination(server: DataSourceServer, client: httpx.Client) -> None:
    expected = [json.loads(line) for line in serialize(server.dataset(), "jsonl").decode().splitlines()]
    first = client.get(server.url + "/api/records", params={"page_size": 500})
    assert first.headers["content-type"] == "application/json" and first.headers["etag"]
    body = first.json()
    assert body["total"] == 1200 and len(body["records"]) == 500
    assert body["next"].startswith(server.url + "/api/records?") and "cursor=" in body["next"]
    collected, pages, url = list(body["records"]), 1, body["next"]
    second_url = url
    while url:
        page = client.get(url).json()
        collected += page["records"]
        pages += 1
        url = page["next"]
        if url:
            # next_cursor is the same position as the next link.
            assert f"cursor={page['next_cursor']}" in url
    assert pages == 3 and collected == expected
    assert client.get(second_url).json() == client.get(second_url).json()  # stable pages
    assert any(value is None for record in collected for value in record.values())  # NaN -> null

    assert (
        client.get(
            server.url + "/api/records", headers={"If-None-Match": first.headers["etag"]}, params={"page_size": 500}
        ).status_code
        == 304
    )
    assert client.get(server.url + "/api/records", params={"cursor": "garbage!"}).status_code == 400
    assert client.get(server.url + "/api/records", params={"page_size": 0}).status_code == 400
    server.bump_version()
    stale = client.get(second_url)
    assert stale.status_code == 410 and "changed" in stale.json()["error"]


def test_next_link_pagination(server: DataSourceServer, client: httpx.Client) -> None:
    expected = [json.loads(line) for line in serialize(server.dataset(), "jsonl").decode().splitlines()]
    collected: list[dict] = []
    url: str | None = server.url + "/api/pages?page_size=250"
    pages = 0
    while url:
        page = client.get(url).json()
        assert set(page) == {"data", "links", "meta"}
        collected += page["data"]
        url = page["links"]["next"]
        pages += 1
    assert pages == 5 and collected == expected
    beyond = client.get(server.url + "/api/pages", params={"page": 99, "page_size": 250}).json()
    assert beyond["data"] == [] and beyond["links"]["next"] is None
    assert client.get(server.url + "/api/pages", params={"page": 0}).status_code == 400


def test_injected_failures_delay_and_chunking(server: DataSourceServer, client: httpx.Client) -> None:
    server.fail_next(2, 503)
    assert client.get(server.url + "/health").status_code == 200  # health is never failed
    assert [client.get(server.url + "/data.csv").status_code for _ in range(3)] == [503, 503, 200]
    server.fail_next(1, 429)
    limited = client.get(server.url + "/api/records")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "0"
    with pytest.raises(ValueError):
        server.fail_next(1, 200)

    server.delay_seconds = 0.3
    started = time.perf_counter()
    assert client.get(server.url + "/data.csv").status_code == 200
    assert time.perf_counter() - started >= 0.3
    server.delay_seconds = 0

    server.chunked = True
    chunked = client.get(server.url + "/data.csv")
    assert "content-length" not in chunked.headers and chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.content == serialize(server.dataset(), "csv")
    statuses = [r.status for r in server.requests if r.path.startswith("/data.csv")]
    assert statuses[:3] == [503, 503, 200]


def test_broken_csv_does_not_parse(server: DataSourceServer, client: httpx.Client) -> None:
    response = client.get(server.url + "/broken.csv")
    assert response.status_code == 200 and response.content == BROKEN_CSV
    with pytest.raises((pd.errors.ParserError, UnicodeDecodeError)):
        pd.read_csv(io.BytesIO(response.content), dtype=str)
    # Even without the garbage bytes, the unbalanced quote and ragged rows break the parser.
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(io.BytesIO(BROKEN_CSV.split(b"\xff")[0]), dtype=str)


def test_cli_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlpipeline.dev.datasource", "--port", "0", "--rows", "300", "--seed", "3", "--drift"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        assert httpx.get(url + "/health", timeout=5).json()["rows"] == 300
        body = httpx.get(url + "/data.csv", timeout=5).content
        assert body == serialize(generate_churn_dataset(300, 3, drift=True), "csv")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
