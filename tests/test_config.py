from __future__ import annotations

import json

import pytest

from mlpipeline.config import (
    FIELD_NAMES,
    RUN_OVERRIDABLE_FIELDS,
    ConfigError,
    PipelineConfig,
    build_config,
    load_config,
    read_config,
)


def test_defaults_are_valid_and_documented() -> None:
    config = build_config()
    assert config.ml_model_type == "hist_gradient_boosting"
    assert config.dataset_schema.target == "churned"
    for name, field in PipelineConfig.model_fields.items():
        assert field.description or name in {"mlflow_experiment", "registered_model_name", "champion_alias"}, name


def test_variables_are_strings_and_json_is_decoded() -> None:
    variables = {
        "accuracy_threshold": "0.8",
        "test_size": "0.3",
        "random_state": "7",
        "ml_model_type": "random_forest",
        "hyperparameters": '{"n_estimators": 50}',
        "notification_email": "a@example.com, b@example.com",
    }
    config = load_config(variables.get)
    assert config.metric_threshold == 0.8
    assert config.random_state == 7
    assert config.hyperparameters == {"n_estimators": 50}
    assert config.notification_email == ["a@example.com", "b@example.com"]


def test_run_conf_overrides_variables() -> None:
    config = load_config({"accuracy_threshold": "0.8"}.get, {"accuracy_threshold": 0})
    assert config.metric_threshold == 0


@pytest.mark.parametrize(
    ("layer", "field", "reason"),
    [
        ({"accuracy_threshold": "1.5"}, "metric_threshold", "outside what accuracy can be"),
        ({"test_size": 0}, "test_size", "greater than 0"),
        ({"crawl_url": "ftp://example.com/x"}, "crawl_url", "http"),
        ({"ml_model_type": "svm"}, "ml_model_type", "random_forest"),
        ({"notification_email": "not-an-address"}, "notification_email", "not an email address"),
        ({"dataset_schema": "{broken"}, "dataset_schema", "not valid JSON"),
        ({"no_such_setting": 1}, "no_such_setting", "unknown setting"),
        (
            {"dataset_schema": {"target": "y", "columns": [{"name": "y", "type": "numeric"}]}},
            "dataset_schema",
            "also declared as a feature",
        ),
        (
            {"dataset_schema": {"target": "y", "columns": [{"name": "a", "type": "numeric", "min": 2, "max": 1}]}},
            "dataset_schema",
            "greater than max",
        ),
    ],
)
def test_a_bad_value_names_the_field_and_the_reason(layer: dict, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(layer)
    message = str(caught.value)
    assert field in message
    assert reason in message


def test_another_dataset_is_configuration_only(tmp_path) -> None:
    schema = {
        "target": "label",
        "positive_label": "yes",
        "columns": [
            {"name": "x", "type": "numeric"},
            {"name": "colour", "type": "categorical", "categories": ["red", "blue"]},
            {"name": "when", "type": "date", "required": False},
        ],
    }
    config = build_config({"dataset_schema": json.dumps(schema), "crawl_url": "https://example.org/data.csv"})
    assert config.dataset_schema.feature_names == ["x", "colour", "when"]
    frozen = tmp_path / "config.json"
    frozen.write_text(config.model_dump_json())
    assert read_config(str(frozen)) == config


def test_field_names_are_the_variable_names() -> None:
    for name in ("crawl_url", "ml_model_type", "metric_threshold", "test_size", "random_state", "notification_email"):
        assert name in FIELD_NAMES


INFRASTRUCTURE_FIELDS = sorted(set(FIELD_NAMES) - RUN_OVERRIDABLE_FIELDS)


def test_infrastructure_fields_are_what_a_run_may_not_change() -> None:
    for name in ("crawl_url", "data_dir", "mlflow_tracking_uri", "serving_url", "registered_model_name"):
        assert name in INFRASTRUCTURE_FIELDS
    for name in ("accuracy_threshold", "candidates", "hyperparameters", "test_size", "random_state"):
        assert name in RUN_OVERRIDABLE_FIELDS


@pytest.mark.parametrize("field", INFRASTRUCTURE_FIELDS)
def test_run_conf_may_not_override_infrastructure(field: str) -> None:
    value = json.loads(PipelineConfig().model_dump_json())[field]
    with pytest.raises(ConfigError, match=f"{field}: may not be changed by a run's conf"):
        load_config({}.get, {field: value})
    # The same value from a Variable is fine: infrastructure is the operator's.
    assert load_config({field: json.dumps(value) if not isinstance(value, str) else value}.get, {})


def test_refused_run_conf_names_every_field_and_what_may_change() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}.get, {"crawl_url": "http://evil.example/", "data_dir": "/etc", "accuracy_threshold": 0.5})
    message = str(caught.value)
    assert "crawl_url, data_dir: may not be changed" in message
    assert "accuracy_threshold" in message.split("a run may change:")[1]


@pytest.mark.parametrize(
    "value",
    ["ops@example.com\r\nBcc: victim@example.com", "a@exa\tmple.com", "ops@example.com\x00", "a@b.com\nX: y"],
)
def test_control_characters_in_email_settings_are_refused(value: str) -> None:
    for field in ("notification_email", "email_from"):
        with pytest.raises(ConfigError, match=f"{field}.*not an email address"):
            build_config({field: [value] if field == "notification_email" else value})


def test_unknown_setting_error_is_bounded() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"x" * 1_000_000: 1})
    assert len(str(caught.value)) < 5_000


def test_crawl_and_data_bounds_have_defaults() -> None:
    config = build_config()
    assert config.crawl_allowed_origins == [] and config.crawl_deadline_seconds == 600
    assert config.crawl_max_rows == 20_000_000 and config.crawl_max_uncompressed_bytes == 1 << 30
    assert (config.max_missing_fraction, config.max_cell_chars, config.max_quarantine_rows) == (0.5, 10_000, 10_000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('["https://mirror.example", "http://10.0.0.5:8080/"]', ["https://mirror.example", "http://10.0.0.5:8080/"]),
        ("https://a.example, https://b.example:8443", ["https://a.example", "https://b.example:8443"]),
    ],
)
def test_allowed_origins_from_a_variable(raw: str, expected: list[str]) -> None:
    assert load_config({"crawl_allowed_origins": raw}.get).crawl_allowed_origins == expected


@pytest.mark.parametrize(
    "origin",
    [
        "https://mirror.example/data",
        "ftp://mirror.example",
        "https://user:secret@mirror.example",
        "https://mirror.example:99999",
        "https://mirror.example?x=1",
        "mirror.example",
    ],
)
def test_an_allowed_origin_is_only_scheme_host_and_port(origin: str) -> None:
    with pytest.raises(ConfigError, match=r"crawl_allowed_origins.*not an origin"):
        build_config({"crawl_allowed_origins": [origin]})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crawl_deadline_seconds", 0),
        ("crawl_max_rows", 0),
        ("crawl_max_uncompressed_bytes", -1),
        ("max_missing_fraction", 1.5),
        ("max_cell_chars", 0),
        ("max_quarantine_rows", -1),
    ],
)
def test_bounds_must_be_sensible(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        build_config({field: value})


def test_a_run_may_not_widen_where_the_crawl_goes() -> None:
    with pytest.raises(ConfigError, match="crawl_allowed_origins: may not be changed by a run's conf"):
        load_config({}.get, {"crawl_allowed_origins": ["http://169.254.169.254"]})
