"""The prediction store's writers: PostgreSQL's COPY path stores exactly what the executemany INSERT stores (SQLite),
hostile text included, and a batch written twice is stored once (a retry after a lost commit acknowledgement)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mlpipeline.prediction_store import (
    copy_new,
    create_tables,
    engine_for,
    insert_new,
    prediction_requests,
    predictions,
)
from tests import services

HOSTILE = "tab\there, line\nbreak, cr\rreturn, back\\slash, \\N, quote\" ' é 漢字 \x01"


def _requests() -> list[dict[str, Any]]:
    return [
        {
            "request_id": "r1",
            "served_at": 1_700_000_000.123456,
            "model_name": f"model {HOSTILE}",
            "model_version": "3",
            "rows": 2,
            "latency_ms": 0.25,
            "status_code": 200,
            "error": None,
            "task": "multiclass",
            "classes": ["a\tb", "c\\d", HOSTILE],
        },
        {
            "request_id": "r2",
            "served_at": 1_700_000_001.0,
            "model_name": None,
            "model_version": None,
            "rows": 0,
            "latency_ms": 1e-7,
            "status_code": 503,
            "error": HOSTILE,
            "task": None,
            "classes": None,
        },
    ]


def _predictions() -> list[dict[str, Any]]:
    return [
        {
            "request_id": "r1",
            "row_index": index,
            "served_at": 1_700_000_000.123456,
            "model_name": "m",
            "model_version": "3",
            "features": {"text": HOSTILE, "number": 1.5 + index, "missing": None, "flag": True, HOSTILE: [1, 2]},
            "prediction": HOSTILE if index else 7,
            "probabilities": None if index else {"a\tb": 0.25, HOSTILE: 0.75},
        }
        for index in range(2)
    ]


def _stored(url: str) -> tuple[list[tuple], list[tuple]]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return (
                [tuple(row) for row in connection.execute(select(prediction_requests).order_by("request_id"))],
                [tuple(row) for row in connection.execute(select(predictions).order_by("request_id", "row_index"))],
            )
    finally:
        engine.dispose()


def _write(url: str, writer: Any, times: int) -> None:
    engine = engine_for(url)
    create_tables(engine)
    try:
        for _ in range(times):
            with engine.begin() as connection:
                writer(connection, prediction_requests, _requests())
                writer(connection, predictions, _predictions())
    finally:
        engine.dispose()


def test_copy_on_postgresql_stores_what_insert_stores_and_a_retried_batch_once(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'log.db'}"
    _write(sqlite_url, insert_new, times=2)
    with services.postgres_server() as pg, services.databases(pg, "store") as (database,):
        postgres_url = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{database}"
        _write(postgres_url, copy_new, times=2)
        postgres = _stored(postgres_url)
    sqlite = _stored(sqlite_url)
    assert len(postgres[0]) == 2 and len(postgres[1]) == 2  # written twice, stored once
    assert postgres == sqlite
    # The JSON columns read back as the values written (not their text), the hostile key and label included.
    assert postgres[1][0][5] == json.loads(json.dumps(_predictions()[0]["features"]))
    assert postgres[1][1][6] == HOSTILE
    assert postgres[0][1][4:8] == (0, 1e-7, 503, HOSTILE)
