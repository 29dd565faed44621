"""Live traffic for the live-monitoring tests: real rows of the churn data sent to a real model server's
``/predict``, and what it answered written into the prediction log's tables exactly as the server logs them
(``mlpipeline.prediction_store``), with the actual outcomes as ``/feedback`` stores them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import insert

from mlpipeline.dataset import default_schema
from mlpipeline.dev.churn_data import generate_churn_dataset
from mlpipeline.payload import json_rows
from mlpipeline.prediction_store import create_tables, engine_for, feedback, prediction_requests, predictions

BATCH_ROWS = 50
HOUR = 3600.0


@dataclass(frozen=True)
class Sent:
    rows: int
    requests: int


def churn_rows(rows: int, seed: int, *, drift: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
    """Clean churn rows as a client sends them (the feature columns) and their true outcome."""
    frame = generate_churn_dataset(rows, seed, drift=drift, missing_rate=0, malformed_rate=0, duplicate_rate=0)
    for column in default_schema().columns_of_type("boolean"):  # the model's signature takes booleans as 0/1
        frame[column] = frame[column].map({"true": 1.0, "false": 0.0})
    return json_rows(frame.drop(columns=["churned", "customer_id"])), [int(v) for v in frame["churned"]]


def send_traffic(
    log_url: str,
    serving_url: str,
    rows: list[dict[str, Any]],
    actual: list[int] | None,
    *,
    start: float,
    seconds: float = HOUR,
    version: str | None = None,
) -> Sent:
    """Send ``rows`` to ``/predict`` in batches spread over ``seconds`` from ``start`` (epoch), log each request
    and answered row, and each row's ``actual`` outcome as feedback (None: no feedback). ``version`` overrides the
    answering version in the log (traffic of another version)."""
    engine = engine_for(log_url)
    create_tables(engine)
    batches = [rows[i : i + BATCH_ROWS] for i in range(0, len(rows), BATCH_ROWS)]
    try:
        with httpx.Client(base_url=serving_url, timeout=30) as http, engine.begin() as db:
            for number, batch in enumerate(batches):
                served_at = start + seconds * number / max(len(batches), 1)
                began = time.perf_counter()
                response = http.post("/predict", json={"rows": batch})
                latency = (time.perf_counter() - began) * 1000
                assert response.status_code == 200, response.text[:500]
                body = response.json()
                request_id = uuid.uuid4().hex
                answered = version or str(body["model_version"])
                db.execute(
                    insert(prediction_requests),
                    [
                        {
                            "request_id": request_id,
                            "served_at": served_at,
                            "model_name": body["model_name"],
                            "model_version": answered,
                            "rows": len(batch),
                            "latency_ms": latency,
                            "status_code": 200,
                        }
                    ],
                )
                db.execute(
                    insert(predictions),
                    [
                        {
                            "request_id": request_id,
                            "row_index": index,
                            "served_at": served_at,
                            "model_name": body["model_name"],
                            "model_version": answered,
                            "features": row,
                            "prediction": body["predictions"][index],
                            "probabilities": body["probabilities"][index],
                        }
                        for index, row in enumerate(batch)
                    ],
                )
                if actual is not None:
                    offset = number * BATCH_ROWS
                    db.execute(
                        insert(feedback),
                        [
                            {
                                "request_id": request_id,
                                "row_index": index,
                                "actual": actual[offset + index],
                                "received_at": served_at + 60,
                            }
                            for index in range(len(batch))
                        ],
                    )
    finally:
        engine.dispose()
    return Sent(len(rows), len(batches))


def refused_requests(log_url: str, model_name: str, count: int, *, start: float, status: int = 422) -> None:
    """``count`` requests the server refused (no answered rows), as it logs them."""
    engine = engine_for(log_url)
    create_tables(engine)
    rows = [
        {
            "request_id": uuid.uuid4().hex,
            "served_at": start + n,
            "model_name": model_name,
            "model_version": None,
            "rows": 1,
            "latency_ms": 1.0,
            "status_code": status,
            "error": "invalid input",
        }
        for n in range(count)
    ]
    try:
        with engine.begin() as db:
            db.execute(insert(prediction_requests), rows)
    finally:
        engine.dispose()
