"""Settings from Airflow Variables: an unset one is None (its default applies), and only that expected miss of the
Task SDK client is kept out of the log, for the key asked about; the DAG-run test checks a whole run's log."""

from __future__ import annotations

from typing import Any

import pytest

from mlpipeline_airflow import variables


class RecordingLogger:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def error(self, event: Any = None, **kw: Any) -> None:
        self.calls.append(("error", event, kw))

    def info(self, event: Any = None, **kw: Any) -> None:
        self.calls.append(("info", event, kw))


def test_a_set_variable_is_read_and_an_unset_one_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CRAWL_URL", "http://127.0.0.1:9/data.csv")
    monkeypatch.delenv("AIRFLOW_VAR_NOT_A_SETTING", raising=False)
    assert variables.optional_variable("crawl_url") == "http://127.0.0.1:9/data.csv"
    assert variables.optional_variable("not_a_setting") is None


def test_only_the_expected_miss_is_dropped_and_the_client_logger_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.api import client

    recorder = RecordingLogger()
    monkeypatch.setattr(client, "log", recorder)
    with variables._expected_miss_not_logged("task"):
        client.log.error("Variable not found", key="task", status_code=404)  # the expected miss: dropped
        client.log.error("Variable not found", key="other", status_code=404)  # another key's: kept
        client.log.error("XCom not found", key="task")  # another error: kept
        client.log.info("anything")
    assert client.log is recorder
    assert recorder.calls == [
        ("error", "Variable not found", {"key": "other", "status_code": 404}),
        ("error", "XCom not found", {"key": "task"}),
        ("info", "anything", {}),
    ]


def test_the_client_logger_is_restored_when_the_lookup_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.api import client

    recorder = RecordingLogger()
    monkeypatch.setattr(client, "log", recorder)
    with pytest.raises(RuntimeError), variables._expected_miss_not_logged("task"):
        raise RuntimeError("the API server is down")
    assert client.log is recorder
