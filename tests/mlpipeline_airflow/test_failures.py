from __future__ import annotations

import pytest
from airflow.exceptions import AirflowFailException

from mlpipeline.config import ConfigError
from mlpipeline.stages.crawl import CrawlError
from mlpipeline.stages.etl import EtlError
from mlpipeline_airflow.failures import fail_fast_on


@pytest.mark.parametrize("error", [ConfigError("accuracy_threshold: must be <= 1"), EtlError("no rows left")])
def test_listed_errors_fail_at_once_with_the_library_message(error: Exception) -> None:
    with pytest.raises(AirflowFailException) as raised, fail_fast_on(ConfigError, EtlError):
        raise error
    assert str(raised.value) == f"{type(error).__name__}: {error}"
    assert raised.value.__cause__ is error  # the original traceback stays in the task log


def test_a_subclass_of_a_listed_error_fails_at_once() -> None:
    class SchemaError(EtlError):
        pass

    with pytest.raises(AirflowFailException, match="SchemaError: column x is missing"), fail_fast_on(EtlError):
        raise SchemaError("column x is missing")


def test_other_errors_pass_through_unchanged_so_airflow_retries_them() -> None:
    error = OSError("disk full")
    with pytest.raises(OSError) as raised, fail_fast_on(ConfigError, EtlError):
        raise error
    assert raised.value is error


def test_an_error_that_says_it_is_retryable_passes_through() -> None:
    error = CrawlError("GET http://source/ failed after 3 attempt(s)", retryable=True)
    with pytest.raises(CrawlError) as raised, fail_fast_on(CrawlError):
        raise error
    assert raised.value is error


def test_an_error_that_says_it_is_not_retryable_fails_at_once() -> None:
    not_found = CrawlError("GET http://source/ answered 404", retryable=False)
    with (
        pytest.raises(AirflowFailException, match=r"^CrawlError: GET http://source/ answered 404$"),
        fail_fast_on(CrawlError),
    ):
        raise not_found


def test_no_error_leaves_the_result_alone() -> None:
    with fail_fast_on(ConfigError):
        result = 40 + 2
    assert result == 42
