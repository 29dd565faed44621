"""Reading the pipeline's settings from Airflow Variables, where an unset Variable is normal: the setting keeps its
default.

Airflow 3.1's Task SDK logs every miss at ERROR level ("Variable not found", ``airflow.sdk.api.client``), even when
``Variable.get`` was given a default; ``start`` reads one Variable per setting, so a healthy run logged ~50 errors.
The Execution API that tasks talk to has no way to list the Variables that exist (only get/put/delete one key), so
the lookups cannot be narrowed to the Variables that are set. Airflow itself lowered this log to DEBUG later
(apache/airflow#61625, not in 3.1.x): until the pinned Airflow has that fix, :func:`optional_variable` drops exactly
that message, for the key it asks about, while it asks — any other error of the client is logged as before.

Where the API client runs: in the task's own process under ``airflow dags test`` (the message would land among the
task's lines), in the supervising worker process otherwise (its stdout): there the drop is a no-op, and the task log
the UI shows never had the message.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from airflow.sdk import Variable

_MISS = "Variable not found"
_swap_lock = threading.Lock()


def optional_variable(name: str) -> str | None:
    """The Airflow Variable ``name`` (environment ``AIRFLOW_VAR_<NAME>`` first), None when it is not set."""
    with _expected_miss_not_logged(name):
        return Variable.get(name, default=None)


class _DropExpectedMiss:
    """The API client's logger, minus the "Variable not found" error for one key."""

    def __init__(self, logger: Any, key: str) -> None:
        self._logger, self._key = logger, key

    def error(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        if event == _MISS and kw.get("key") == self._key:
            return None
        return self._logger.error(event, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


@contextlib.contextmanager
def _expected_miss_not_logged(key: str) -> Iterator[None]:
    try:
        from airflow.sdk.api import client
    except ImportError:  # another Airflow layout: nothing to quiet, Variable.get works all the same
        yield
        return
    original = getattr(client, "log", None)
    if original is None:
        yield
        return
    with _swap_lock:  # one swap at a time: concurrent callers never restore each other's wrapper
        client.log = _DropExpectedMiss(original, key)
        try:
            yield
        finally:
            client.log = original
