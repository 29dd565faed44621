"""The prediction log: what the model server answered, and the outcomes that arrive later (feedback).

Written by the model server (:mod:`mlpipeline.serving`, off the request path), read by live monitoring
(``model_monitoring``). Plain SQLAlchemy Core tables, so the same schema lives in the stack's PostgreSQL (its own
database) and in SQLite on the embedded default. Times are UNIX epoch seconds (floats): portable across both
databases and cheap to window on.

- ``prediction_requests``: one row per ``/predict`` request that was logged (sampled, answered or refused): its
  id, when, the model version that answered (None if none did), rows, latency and HTTP status; and that version's
  task and classes (what ``/feedback`` checks an actual outcome against, whichever version serves by then).
- ``predictions``: one row per predicted input row of an answered request: the input (JSON object of the
  columns), the answer (label or number) and, for a classifier, the probabilities (JSON).
- ``feedback``: the actual outcome of one predicted row, posted later to ``/feedback``.
- ``monitoring_checks`` and ``monitoring_drift``: what each ``model_monitoring`` run found (the verdict, sample
  sizes, live vs validation score; PSI and KS per feature), for dashboards (Grafana's PostgreSQL datasource).
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

metadata = MetaData()

prediction_requests = Table(
    "prediction_requests",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("served_at", Float, nullable=False),
    Column("model_name", String(256), nullable=True),
    Column("model_version", String(64), nullable=True),  # None: no model answered (e.g. 503)
    Column("rows", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("error", Text, nullable=True),  # why a refused request was refused (short)
    Column("task", String(16), nullable=True),  # binary / multiclass / regression of the version that answered
    Column("classes", JSON, nullable=True),  # that version's classes as /predict answers them (classifiers)
    Index("ix_prediction_requests_served_at", "served_at"),
)

predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("row_index", Integer, primary_key=True),
    Column("served_at", Float, nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("features", JSON, nullable=False),  # the input row as sent: {column: value}
    Column("prediction", JSON, nullable=False),  # the label (classifier) or the number (regressor)
    Column("probabilities", JSON, nullable=True),  # classifier: P(positive) (binary) or {label: p} (multiclass)
    Index("ix_predictions_served_at", "served_at"),
    Index("ix_predictions_model", "model_name", "model_version"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("row_index", Integer, primary_key=True),
    Column("actual", JSON, nullable=False),  # the true label / number of that row
    Column("received_at", Float, nullable=False),
)

monitoring_checks = Table(
    "monitoring_checks",
    metadata,
    Column("check_id", String(64), primary_key=True),  # the monitoring DAG run's key
    Column("checked_at", Float, nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("verdict", String(32), nullable=False),  # healthy / degraded / not_enough_traffic
    Column("window_start", Float, nullable=False),
    Column("window_end", Float, nullable=False),
    Column("predictions", Integer, nullable=False),  # logged predicted rows in the window
    Column("with_feedback", Integer, nullable=False),
    Column("metric", String(64), nullable=True),
    Column("live_score", Float, nullable=True),
    Column("validation_score", Float, nullable=True),
    Column("error_rate", Float, nullable=True),
    Column("latency_p95_ms", Float, nullable=True),
    Column("details", JSON, nullable=False),  # the reasons and anything else of the record
    Index("ix_monitoring_checks_checked_at", "checked_at"),
)

monitoring_drift = Table(
    "monitoring_drift",
    metadata,
    Column("check_id", String(64), primary_key=True),
    Column("feature", String(256), primary_key=True),  # a feature, or "__prediction__" for the model's answers
    Column("psi", Float, nullable=True),
    Column("ks_pvalue", Float, nullable=True),
    Column("drifted", Integer, nullable=False),  # 1 / 0 (portable boolean)
)


def engine_for(url: str) -> Engine:
    """An engine for the prediction log at ``url`` (``sqlite:////abs/path.db`` or ``postgresql://...``).
    ``pool_pre_ping``: a database that restarted costs one reconnect, not a failed batch."""
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 5}, pool_pre_ping=True)
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args={"connect_timeout": 5})


def create_tables(engine: Engine) -> None:
    """Create the tables that do not exist yet (idempotent: every writer and reader may call it)."""
    metadata.create_all(engine, checkfirst=True)


def _dialect_insert(connection: Connection, table: Table) -> Insert:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite share the syntax)."""
    name = connection.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"the prediction log supports PostgreSQL and SQLite, not {name}")
    return insert(table)


def insert_new(connection: Connection, table: Table, rows: list[dict]) -> None:
    """Insert ``rows`` (executemany), skipping those whose primary key is already there: a batch retried after a
    commit whose acknowledgement was lost is written once."""
    if rows:
        keys = [column.name for column in table.primary_key.columns]
        connection.execute(_dialect_insert(connection, table).on_conflict_do_nothing(index_elements=keys), rows)


def copy_new(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """:func:`insert_new` for PostgreSQL through ``COPY``: the rows stream into a temporary table, then one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` moves them. Same result, a fraction of the client's CPU
    (no per-row statement rendering) in the prediction log's writer process."""
    if not rows:
        return
    names = [column.name for column in table.columns]
    staged = f"staged_{table.name}"
    keys = ", ".join(column.name for column in table.primary_key.columns)
    listed = ", ".join(f'"{name}"' for name in names)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staged} (LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        json_columns = {column.name for column in table.columns if isinstance(column.type, JSON)}
        buffer = io.StringIO("".join(_copy_line(row, names, json_columns) for row in rows))
        cursor.copy_expert(f"COPY {staged} ({listed}) FROM STDIN", buffer)
        cursor.execute(
            f"INSERT INTO {table.name} ({listed}) SELECT {listed} FROM {staged} ON CONFLICT ({keys}) DO NOTHING"
        )
    except connection.dialect.dbapi.Error as exc:
        # The driver's own error, as SQLAlchemy would have raised it (callers retry on SQLAlchemyError); a lost
        # connection is invalidated so the pool does not hand it out again.
        if connection.dialect.is_disconnect(exc, connection.connection, cursor):
            connection.invalidate(exc)
        raise DBAPIError.instance(f"COPY {table.name}", None, exc, connection.dialect.dbapi.Error) from exc
    finally:
        with contextlib.suppress(connection.dialect.dbapi.Error):  # a connection already gone closes its cursors
            cursor.close()


def _copy_line(row: dict[str, Any], names: list[str], json_columns: set[str]) -> str:
    """One row in COPY's text format: tab-separated, ``\\N`` for NULL, backslash, tab and line breaks escaped.
    (JSON text has no raw tab or line break: ``json.dumps`` escapes them, leaving only its backslashes to double.)"""
    fields = []
    for name in names:
        value = row.get(name)
        if name in json_columns:
            fields.append(json.dumps(value).replace("\\", "\\\\"))  # None is JSON null, as SQLAlchemy writes it
        elif value is None:
            fields.append("\\N")
        else:
            fields.append(_escape_copy_text(str(value)))
    return "\t".join(fields) + "\n"


def _escape_copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def upsert(connection: Connection, table: Table, rows: list[dict]) -> None:
    """Insert ``rows``, replacing the other columns of a row whose primary key is already there (a re-posted
    outcome replaces the earlier one). The rows must have distinct keys (PostgreSQL refuses to touch a row twice
    in one statement)."""
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    statement = _dialect_insert(connection, table)
    replaced = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=replaced), rows)
