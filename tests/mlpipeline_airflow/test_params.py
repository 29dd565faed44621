"""The trigger form: generated from the configuration's schema for exactly the settings a run may change; it
refuses what the configuration would, and an empty field means the Variable."""

from __future__ import annotations

import pytest
from airflow.exceptions import ParamValidationError
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from mlpipeline.config import RUN_OVERRIDABLE_FIELDS, THRESHOLD_ALIASES, load_config
from mlpipeline_airflow.params import run_params, without_empty


def test_the_form_has_a_field_for_each_setting_a_run_may_change() -> None:
    params = run_params()
    assert set(params) == RUN_OVERRIDABLE_FIELDS - set(THRESHOLD_ALIASES)
    assert all(isinstance(p, Param) and p.value is None and p.description for p in params.values())
    assert params["validation_metric"].schema["enum"][:3] == [None, "accuracy", "balanced_accuracy"]
    # The UI labels the empty choice by values_display["null"] (else it reads "null").
    assert params["validation_metric"].schema["values_display"] == {"null": "(the Variable's value)"}
    assert params["test_size"].schema["exclusiveMaximum"] == 1


@pytest.mark.parametrize(
    ("field", "bad"),
    [("test_size", 1.5), ("ml_model_type", "xgboost"), ("min_rows", 3), ("task", "ranking"), ("random_state", "x")],
)
def test_the_form_refuses_what_the_configuration_refuses(field: str, bad: object) -> None:
    params = ParamsDict(run_params())
    with pytest.raises(ParamValidationError):
        params[field] = bad
    with pytest.raises(ValueError, match=field):  # ConfigError
        load_config({}.get, {field: bad})


def test_an_empty_form_is_a_run_on_the_variables() -> None:
    filled = ParamsDict(run_params()).dump()
    assert all(value is None for value in filled.values())
    variables = {"metric_threshold": "0.9", "ml_model_type": "random_forest"}
    config = load_config(variables.get, without_empty({**filled, "test_size": 0.3}))
    assert (config.metric_threshold, config.ml_model_type, config.test_size) == (0.9, "random_forest", 0.3)
