"""Which errors fail a task at once: bad config or bad data will not fix itself on retry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.sdk import get_current_context

# The last error fail_fast_on turned into a failure in this process. Airflow 3.1 gives on_failure_callback the
# exception only when a worker runs the task in its own process; `airflow dags test` runs it in-process
# (supervisor.run_task_in_process) and leaves it out of the context, so the failure email reads it from here.
_last_failure: dict[tuple[Any, ...], AirflowFailException] = {}


def _try_key(ti: Any) -> tuple[Any, ...]:
    return (ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1), getattr(ti, "try_number", None))


def last_failure(ti: Any) -> AirflowFailException | None:
    """The error fail_fast_on raised in this process for this very try of ``ti``, if any."""
    return _last_failure.get(_try_key(ti))


@contextmanager
def fail_fast_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn the listed errors into ``AirflowFailException`` (failed now, no retries) with the library's message.

    An error that says running again later may help (``retryable = True``, e.g. a crawl of a source that timed
    out) is let through, like any error not listed, so Airflow retries it as configured.
    """
    try:
        yield
    except errors as exc:
        if getattr(exc, "retryable", False):
            raise
        failure = AirflowFailException(f"{type(exc).__name__}: {exc}")
        with suppress(Exception):  # outside a task (a library caller) there is no try to remember it for
            _last_failure.clear()
            _last_failure[_try_key(get_current_context()["ti"])] = failure
        raise failure from exc
