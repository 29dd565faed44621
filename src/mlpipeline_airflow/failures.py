"""Which errors fail a task at once: bad config or bad data will not fix itself on retry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.exceptions import AirflowFailException


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
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
