"""The pipeline's one typed configuration object.

Every field has a documented default. In Airflow each field is read from the Airflow Variable of the same name
(``crawl_url``, ``ml_model_type``, ...; JSON for lists and objects) and a run's ``conf`` may override the
fields that say how to train and judge a model (``RUN_OVERRIDABLE_FIELDS``), never infrastructure.
Outside Airflow the same object is built from plain dictionaries. A bad value raises :class:`ConfigError` whose
message names the field and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlpipeline.constants import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from mlpipeline.dataset import ColumnSpec as ColumnSpec
from mlpipeline.dataset import ColumnType as ColumnType
from mlpipeline.dataset import DatasetSchema, default_schema
from mlpipeline.tasks import DEFAULT_METRIC, METRICS, TASKS, Metric, MetricName, Task, TaskSetting, check_metric_fits

# logistic_regression is for classification, ridge for regression; the other two have both kinds.
ModelType = Literal["random_forest", "hist_gradient_boosting", "logistic_regression", "ridge"]
MODEL_TYPE_TASKS: dict[str, frozenset[str]] = {
    "random_forest": frozenset(TASKS),
    "hist_gradient_boosting": frozenset(TASKS),
    "logistic_regression": frozenset({"binary", "multiclass"}),
    "ridge": frozenset({"regression"}),
}
SourceFormat = Literal["auto", "csv", "jsonl", "parquet", "json_api"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the reason."""


CANDIDATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_CANDIDATES = 64


class Candidate(BaseModel):
    """One model to train: an estimator and its hyperparameters. Several are trained in parallel (one mapped
    Airflow task each) and the best by ``validation_metric`` goes on to validation."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        pattern=CANDIDATE_NAME_PATTERN,
        description="Unique, path-safe name (letters, digits, _ . -); default: <index>_<ml_model_type>.",
    )
    ml_model_type: ModelType
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the estimator.")


class PipelineConfig(BaseModel):
    """All knobs of the pipeline. Field names are the Airflow Variable names."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- the problem ------------------------------------------------------------------------------------
    task: TaskSetting = Field(
        default="auto",
        description="binary, multiclass, regression, or auto: decided from the target column of the snapshot (a"
        " number with many distinct values is regression, else classification by class count) and recorded.",
    )

    # --- source -----------------------------------------------------------------------------------------
    crawl_url: str = Field(
        default="http://127.0.0.1:8765/api/records",
        description="HTTP(S) URL of the source data.",
    )
    crawl_format: SourceFormat = Field(
        default="auto",
        description="csv, jsonl, parquet, json_api (paginated), or auto (from Content-Type / URL suffix).",
    )
    crawl_timeout_seconds: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    crawl_max_retries: int = Field(default=4, ge=0, le=20, description="Retries on 5xx/connection errors.")
    crawl_backoff_seconds: float = Field(default=0.5, ge=0, description="First retry delay; doubles on each retry.")
    crawl_max_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Refuse sources larger than this (bytes, all pages)."
    )
    crawl_page_size: int = Field(default=1000, gt=0, le=100_000, description="Page size for json_api.")
    crawl_max_pages: int = Field(default=10_000, gt=0, description="Safety bound for json_api pagination.")
    crawl_records_field: str = Field(
        default="records", description="json_api: the field of each page that holds the rows."
    )
    crawl_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) besides crawl_url's that redirects and next links may lead to;"
        " any other origin is refused (a JSON list, or origins separated by commas).",
    )
    crawl_deadline_seconds: float = Field(
        default=600.0, gt=0, description="The whole crawl (all requests, retries and waits) must end within this."
    )
    crawl_max_rows: int = Field(default=20_000_000, gt=0, description="Refuse sources with more rows than this.")
    crawl_max_uncompressed_bytes: int = Field(
        default=1024 * 1024 * 1024,
        gt=0,
        description="Refuse Parquet sources whose data, decompressed and decoded, is larger than this (bytes);"
        " checked from the file's metadata and dictionaries before any column is expanded.",
    )

    # --- data -------------------------------------------------------------------------------------------
    data_dir: str = Field(default="data", description="Root of raw/, processed/, runs/ (path or file URI).")
    dataset_schema: DatasetSchema = Field(
        default_factory=default_schema, description="Target, feature columns and their types."
    )
    max_bad_row_fraction: float = Field(
        default=0.2, ge=0, le=1, description="ETL fails if more than this fraction of rows is quarantined."
    )
    min_rows: int = Field(default=100, ge=10, description="ETL fails if fewer clean rows than this remain.")
    etl_chunk_rows: int = Field(
        default=250_000, ge=1, description="ETL reads and cleans this many rows at a time; bounds its memory."
    )
    etl_threads: int = Field(
        default=0,
        ge=0,
        description="Threads the ETL types a chunk's columns with, side by side (0: one per CPU core); its result"
        " does not depend on it.",
    )
    max_missing_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="ETL fails if a declared column the source has is missing in more than this share of the clean"
        " rows (imputing it would train on made-up values).",
    )
    max_cell_chars: int = Field(
        default=10_000, ge=1, description="A row with a longer value in a column the ETL uses is quarantined."
    )
    max_quarantine_rows: int = Field(
        default=10_000, ge=0, description="At most this many bad rows are written to quarantine.csv (all are counted)."
    )

    # --- model ------------------------------------------------------------------------------------------
    ml_model_type: ModelType = Field(default="hist_gradient_boosting", description="The estimator.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the estimator (validated by it)."
    )
    candidates: list[Candidate] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="Models to train side by side (a hyperparameter fan-out); the best by validation_metric is "
        "validated. Empty: the one model given by ml_model_type + hyperparameters.",
    )
    test_size: float = Field(default=0.2, gt=0, lt=1, description="Held-out fraction.")
    random_state: int = Field(default=42, ge=0, description="Seed for the split and the estimator.")

    # --- validation -------------------------------------------------------------------------------------
    validation_metric: MetricName | None = Field(
        default=None,
        description="Metric that ranks candidates and judges the best one. Unset: accuracy for classification, r2"
        " for regression. Classification: accuracy, balanced_accuracy, f1 (binary), f1_macro, roc_auc (binary),"
        " roc_auc_ovr (multiclass), log_loss; regression: rmse, mae, r2.",
    )
    metric_threshold: float | None = Field(
        default=None,
        description="Deploy only if validation_metric is at least this (at most, for rmse, mae, log_loss)."
        " Unset: 0.75 for the classification scores, r2 > 0 ... 0.0, no bar for rmse, mae, log_loss."
        " Alias: accuracy_threshold.",
    )
    champion_tolerance: float = Field(
        default=0.0, ge=0, description="Candidate may be this much worse than the champion (in metric units)."
    )
    champion_margin: float = Field(
        default=0.0,
        ge=0,
        description="Without a champion_tolerance, the candidate must beat the champion by more than this: "
        "a tie keeps the champion (a fresh but identical model is churn, not progress).",
    )
    notify_unchanged: bool = Field(
        default=False,
        description="Email one short note when a run stops early because its data and training settings are "
        "those the champion was trained with (it is always recorded in runs/<run>/data_check.json).",
    )

    # --- registry and serving ---------------------------------------------------------------------------
    mlflow_tracking_uri: str = Field(default="sqlite:///mlflow.db", description="MLflow tracking + registry URI.")
    mlflow_artifact_location: str | None = Field(
        default=None,
        description="Where a new experiment stores artifacts; null lets the tracking server decide.",
    )
    mlflow_experiment: str = Field(default="ml_pipeline", min_length=1)
    registered_model_name: str = Field(default=DEFAULT_MODEL_NAME, min_length=1)
    champion_alias: str = Field(default=DEFAULT_ALIAS, pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    serving_url: str = Field(default="http://127.0.0.1:8000", description="Base URL of the model server.")
    serving_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long deploy waits for the endpoint to pick up a new model."
    )
    smoke_test_rows: int = Field(default=200, ge=1, description="Held-out rows the deploy smoke test sends.")

    # --- monitoring -------------------------------------------------------------------------------------
    drift_psi_threshold: float = Field(default=0.2, gt=0, description="PSI above this flags a feature.")
    drift_ks_pvalue: float = Field(default=0.01, gt=0, lt=1, description="KS p-value below this flags it.")
    monitor_latency_budget_ms: float = Field(
        default=250.0, gt=0, description="p95 latency of live checks above this is ill health."
    )
    monitor_requests: int = Field(default=50, ge=1, le=10_000, description="Live prediction checks.")

    # --- live monitoring (the model_monitoring DAG, over the model server's prediction log) ---------------
    prediction_log_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the model server's prediction log (sqlite:////abs/path.db or "
        "postgresql://...); null: live traffic is not monitored.",
    )
    monitoring_window_hours: float = Field(
        default=24.0, gt=0, le=24 * 90, description="Live traffic of the last N hours is judged."
    )
    monitoring_min_samples: int = Field(
        default=200,
        ge=10,
        description="Fewer logged predictions (or fewer with feedback, for the live score) than this in the "
        "window: 'not enough traffic', no verdict (PSI and a score on a few rows are mostly noise).",
    )
    live_score_tolerance: float = Field(
        default=0.05,
        ge=0,
        description="Degraded when the live score on rows with feedback is worse than the champion's validation "
        "score by more than this (in the metric's direction).",
    )
    retrain_cooldown_hours: float = Field(
        default=24.0, ge=0, description="At most one retraining request per this many hours."
    )
    prediction_log_retention_days: float = Field(
        default=30.0, gt=0, description="Logged predictions and feedback older than this are deleted."
    )

    # --- links (emails, the Airflow UI) ------------------------------------------------------------------
    airflow_ui_url: str | None = Field(
        default=None, description="Base URL of the Airflow UI, for links to a run; null: no links."
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI, for links to a run; null: the tracking URI if it is http(s).",
    )

    # --- notifications ----------------------------------------------------------------------------------
    notification_email: list[str] = Field(
        default_factory=lambda: ["ml-team@example.com"], min_length=1, description="Recipients."
    )
    email_from: str = Field(default="ml-pipeline@example.com", description="Sender address.")

    # Written by resolved(), never set by a user: the task/schema/metric settings as declared, before the ETL
    # filled them in from the data. Fingerprints ("is this the same training?") compare these.
    declared: dict[str, Any] | None = Field(
        default=None, repr=False, description="Internal: the task/schema/metric settings before the ETL resolved them."
    )

    # --- retention (applied by the ml_maintenance DAG) ----------------------------------------------------
    retention_runs: int = Field(
        default=14,
        ge=1,
        description="Keep the newest N pipeline runs' raw/, processed/, models/ and runs/ directories; older ones "
        "are deleted, except the champion's, its predecessor's and any run that may still be active.",
    )
    retention_registry_versions: int = Field(
        default=10,
        ge=1,
        description="Keep the newest M registered model versions; older ones without an alias are deleted, "
        "except the champion's predecessor and versions of runs that may still be active.",
    )
    retention_grace_hours: float = Field(
        default=24.0,
        ge=1,
        description="A run with a file written this recently may still be active: retention leaves it alone.",
    )

    @field_validator("crawl_url", "serving_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("crawl_allowed_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # a Variable may hold "https://a.example, https://b.example"
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("crawl_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                raise ValueError(f"not an origin (bad port): {origin[:100]!r}") from None
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
                or "@" in parts.netloc
            ):
                raise ValueError(f"not an origin (expected scheme://host[:port]): {origin[:100]!r}")
        return value

    @field_validator("notification_email", mode="before")
    @classmethod
    def _address_list(cls, value: Any) -> Any:
        # One address, or several separated by commas, is accepted as well as a JSON list.
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("notification_email", "email_from")
    @classmethod
    def _emails(cls, value: str | list[str]) -> str | list[str]:
        for address in [value] if isinstance(value, str) else value:
            local, _, domain = address.partition("@")
            # CR/LF or any other whitespace/control character would break (or inject) mail headers.
            if not local or not domain or any(ch.isspace() or not ch.isprintable() for ch in address):
                raise ValueError(f"not an email address: {address[:100]!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _threshold_alias(cls, data: Any) -> Any:
        return threshold_alias(data) if isinstance(data, Mapping) else data

    @model_validator(mode="after")
    def _metric_fits_task(self) -> PipelineConfig:
        if self.validation_metric is not None:
            check_metric_fits(self.validation_metric, self.task)
        bar = self.metric_threshold
        if bar is None:
            return self
        tasks = TASKS if self.task == "auto" else (self.task,)
        # Unset metric: the bar is for the task's default metric (any of them while the task is auto).
        metrics = [METRICS[self.validation_metric or DEFAULT_METRIC[task]] for task in tasks]
        if not any(_within(metric, bar) for metric in metrics):
            metric = metrics[0]
            raise ValueError(
                f"metric_threshold {bar} is outside what {metric.name} can be"
                f" ({'-inf' if metric.lowest is None else metric.lowest} to"
                f" {'inf' if metric.highest is None else metric.highest})"
            )
        return self

    @model_validator(mode="after")
    def _model_types_fit_task(self) -> PipelineConfig:
        if self.task == "auto":
            return self
        for candidate in self.training_candidates():
            if self.task not in MODEL_TYPE_TASKS[candidate.ml_model_type]:
                fitting = [name for name, tasks in MODEL_TYPE_TASKS.items() if self.task in tasks]
                raise ValueError(
                    f"ml_model_type {candidate.ml_model_type!r} does not fit a {self.task} task; model types that"
                    f" fit: {', '.join(fitting)}"
                )
        return self

    @model_validator(mode="after")
    def _id_is_not_a_feature(self) -> PipelineConfig:
        schema = self.dataset_schema
        if schema.id_column and schema.is_resolved and schema.id_column in schema.feature_names:
            raise ValueError(f"dataset_schema: id_column {schema.id_column!r} is also a feature column")
        return self

    @model_validator(mode="after")
    def _one_champion_rule(self) -> PipelineConfig:
        # Two knobs pulling opposite ways (may be worse / must be better) would make the rule unreadable.
        if self.champion_tolerance and self.champion_margin:
            raise ValueError("set champion_tolerance (may be worse) or champion_margin (must be better), not both")
        return self

    @model_validator(mode="after")
    def _candidate_names_are_unique(self) -> PipelineConfig:
        names = [c.name for c in self.training_candidates()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"candidates: duplicate candidate names {duplicates}")
        return self

    def training_candidates(self) -> list[Candidate]:
        """The candidates to train, each with its name filled in."""
        if not self.candidates:
            return [
                Candidate(
                    name=f"00_{self.ml_model_type}",
                    ml_model_type=self.ml_model_type,
                    hyperparameters=self.hyperparameters,
                )
            ]
        return [
            c if c.name else c.model_copy(update={"name": f"{index:02d}_{c.ml_model_type}"})
            for index, c in enumerate(self.candidates)
        ]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def is_resolved(self) -> bool:
        """Whether the task, the metric and the feature columns are known (after the ETL, see :meth:`resolved`)."""
        return self.task != "auto" and self.validation_metric is not None and self.dataset_schema.is_resolved

    def resolved(self, task: Task, schema: DatasetSchema) -> PipelineConfig:
        """This config with the task the data decided, the schema (inferred columns filled in) and the task's
        default metric filled in; what the settings said is kept in ``declared`` (fingerprints compare that)."""
        declared = self.declared or {
            "task": self.task,
            "dataset_schema": self.dataset_schema.model_dump(mode="json"),
            "validation_metric": self.validation_metric,
            "metric_threshold": self.metric_threshold,
        }
        try:
            return PipelineConfig(
                **{
                    **self.model_dump(exclude={"declared"}),
                    "task": task,
                    "dataset_schema": schema.model_dump(),
                    "validation_metric": self.validation_metric or DEFAULT_METRIC[task],
                    "declared": declared,
                }
            )
        except ValidationError as exc:
            raise ConfigError(_format_error(exc)) from None

    @property
    def threshold(self) -> float | None:
        """The bar of a resolved config's metric (``metric_threshold``, else the metric's default)."""
        if self.validation_metric is None:
            raise ValueError("the metric is not resolved yet: the ETL decides the task")
        return self.threshold_for(self.validation_metric)

    def threshold_for(self, metric: str) -> float | None:
        """The bar ``metric`` is judged by: ``metric_threshold``, else the metric's default (None: no bar)."""
        return self.metric_threshold if self.metric_threshold is not None else METRICS[metric].default_threshold


def _within(metric: Metric, value: float) -> bool:
    return (metric.lowest is None or value >= metric.lowest) and (metric.highest is None or value <= metric.highest)


# The settings of a run are the fields above except ``declared`` (written by ``resolved``, never set by a user).
FIELD_NAMES: tuple[str, ...] = tuple(name for name in PipelineConfig.model_fields if name != "declared")
THRESHOLD_ALIASES = ("accuracy_threshold",)


def threshold_alias(layer: Mapping[str, Any]) -> dict[str, Any]:
    """``accuracy_threshold`` (the seed's name) means ``metric_threshold``; setting both is an error."""
    values = dict(layer)
    if "accuracy_threshold" in values:
        if "metric_threshold" in values:
            raise ValueError("set metric_threshold or its old name accuracy_threshold, not both")
        values["metric_threshold"] = values.pop("accuracy_threshold")
    return values


# What one run's ``conf`` may change: how to train and judge a model. Everything else (URLs, paths, the tracking
# URI, registry names, recipients, limits) is infrastructure and comes only from Variables / the environment, so
# whoever may trigger a run cannot make a worker fetch from, load from, write to or mail to a place of their choice.
RUN_OVERRIDABLE_FIELDS: frozenset[str] = frozenset(
    {
        "ml_model_type",
        "hyperparameters",
        "candidates",
        "test_size",
        "random_state",
        "task",
        "validation_metric",
        "metric_threshold",
        "accuracy_threshold",
        "champion_tolerance",
        "champion_margin",
        "max_bad_row_fraction",
        "min_rows",
        "drift_psi_threshold",
        "drift_ks_pvalue",
    }
)


def _format_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        # A rule across fields names them in its message; its input is the whole config, not worth echoing.
        problems.append((f"{field}: {message} (got {item.get('input')!r})" if field else message)[:500])
    return "invalid pipeline configuration: " + "; ".join(problems)


def _decode(name: str, raw: Any) -> Any:
    """Variables are strings; decode JSON for structured fields, keep plain strings as they are."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text == "":
        raise ConfigError(f"invalid pipeline configuration: {name}: empty value")
    if text[0] in "[{" or text in ("null", "true", "false"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid pipeline configuration: {name}: not valid JSON ({exc})") from exc
    return text


def build_config(*layers: Mapping[str, Any]) -> PipelineConfig:
    """Merge layers (later wins) over the defaults and validate; unknown keys are errors."""
    merged: dict[str, Any] = {}
    for layer in layers:
        try:
            layer = threshold_alias(layer)  # per layer: a run's metric_threshold overrides a Variable's old name
        except ValueError as exc:
            raise ConfigError(f"invalid pipeline configuration: metric_threshold: {exc}") from None
        for name, raw in layer.items():
            if name not in FIELD_NAMES:
                raise ConfigError(
                    f"invalid pipeline configuration: {str(name)[:100]}: unknown setting"
                    f" (known: {', '.join(FIELD_NAMES)})"
                )
            merged[name] = _decode(name, raw)
    try:
        return PipelineConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def check_run_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse per-run overrides of infrastructure settings (see ``RUN_OVERRIDABLE_FIELDS``), naming each one."""
    refused = sorted(
        str(name)[:100] for name in overrides if name in FIELD_NAMES and name not in RUN_OVERRIDABLE_FIELDS
    )
    if refused:
        raise ConfigError(
            f"invalid pipeline configuration: {', '.join(refused)}: may not be changed by a run's conf (set the"
            f" Airflow Variable instead); a run may change: {', '.join(sorted(RUN_OVERRIDABLE_FIELDS))}"
        )


def load_config(lookup: Callable[[str], str | None], overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Build the config from a variable lookup (e.g. Airflow's ``Variable.get``) plus per-run overrides.

    The overrides (a run's ``conf``) may change only ``RUN_OVERRIDABLE_FIELDS``; every caller gets that rule here.
    """
    overrides = overrides or {}
    check_run_overrides(overrides)
    from_variables = {name: value for name in (*FIELD_NAMES, *THRESHOLD_ALIASES) if (value := lookup(name)) is not None}
    return build_config(from_variables, overrides)


def read_config(path: str) -> PipelineConfig:
    """Read a config frozen by an earlier task of the same run (resolved by the ETL, or as ``start`` froze it)."""
    with open(path, encoding="utf-8") as handle:
        frozen = json.load(handle)
    declared = frozen.pop("declared", None)
    config = build_config(frozen)
    return config.model_copy(update={"declared": declared}) if declared is not None else config
