"""Serialising churn frames to csv / jsonl / parquet: every format round-trips, malformed text included."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlpipeline.dev.churn_data import COLUMNS, generate_churn_dataset
from mlpipeline.dev.formats import serialize


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
