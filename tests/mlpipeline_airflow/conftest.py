"""Airflow imported in-process for the glue's unit tests: a throwaway home, and ``smtp_default`` pointed at a live
SMTP catcher (``mail``) or at a port nobody listens on (``mail_server_down``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlpipeline.dev.localstack import free_port
from mlpipeline.dev.mailcatcher import MailCatcher

# Before anything imports Airflow: it creates its home (logs/) on import, and ~/airflow is nobody's to litter.
_AIRFLOW_HOME = tempfile.TemporaryDirectory(prefix="mlpipeline-airflow-tests-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME.name)


def _point_smtp_default_at(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    # Plain text on localhost, and no retries: a refused connection should fail the test's send at once.
    uri = f"smtp://127.0.0.1:{port}?disable_ssl=true&disable_tls=true&timeout=10&retry_limit=0"
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", uri)


@pytest.fixture
def mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MailCatcher]:
    """A real SMTP server on a free port, which ``smtp_default`` points at for the test."""
    with MailCatcher(tmp_path / "mail", port=free_port()) as catcher:
        _point_smtp_default_at(monkeypatch, catcher.port)
        yield catcher


@pytest.fixture
def mail_server_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """``smtp_default`` points at a free port: connections are refused."""
    _point_smtp_default_at(monkeypatch, free_port())
