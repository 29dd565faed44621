"""The server's settings: from the environment (``uvicorn --factory``), the command line mapping onto it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from mlpipeline.constants import DEFAULT_ALIAS, DEFAULT_MODEL_NAME, SERVING_TOKEN_ENV

DEFAULT_POLL_SECONDS = 10.0
DEFAULT_MAX_ROWS = 10_000
# 10,000 rows of the churn features are ~1.8 MB of JSON; a body above this is refused before it is read.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# An authenticated caller may force a full download and load at most this often.
DEFAULT_FORCE_RELOAD_SECONDS = 30.0
# The prediction log: every request logged by default; at most this many predicted rows wait for the writer (a
# full queue drops records, counted, rather than growing memory or slowing requests).
DEFAULT_PREDICTION_LOG_SAMPLE = 1.0
DEFAULT_PREDICTION_LOG_BUFFER = 10_000

# The environment variables read by app_from_env (and set by ``python -m mlpipeline.serving`` from its options).
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MODEL_NAME = "MLPIPELINE_MODEL_NAME"
ENV_ALIAS = "MLPIPELINE_MODEL_ALIAS"
ENV_POLL_SECONDS = "MLPIPELINE_POLL_SECONDS"
ENV_MAX_ROWS = "MLPIPELINE_MAX_ROWS"
ENV_MAX_BODY_BYTES = "MLPIPELINE_MAX_BODY_BYTES"
ENV_FORCE_RELOAD_SECONDS = "MLPIPELINE_FORCE_RELOAD_SECONDS"
ENV_SERVING_TOKEN = SERVING_TOKEN_ENV  # a secret: see mlpipeline.constants
ENV_PREDICTION_LOG_URL = "MLPIPELINE_PREDICTION_LOG_URL"  # may carry a password: never logged
ENV_PREDICTION_LOG_SAMPLE = "MLPIPELINE_PREDICTION_LOG_SAMPLE"
ENV_PREDICTION_LOG_BUFFER = "MLPIPELINE_PREDICTION_LOG_BUFFER"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What one server app serves and how: the registry, the registered model and alias, polling, request limits,
    the bearer token of the state-changing endpoints (None: those endpoints are disabled) and the prediction log
    (its SQLAlchemy URL, None: nothing is logged and /feedback is off; the fraction of requests logged; how many
    predicted rows may wait for its writer)."""

    tracking_uri: str
    model_name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_ALIAS
    poll_seconds: float = DEFAULT_POLL_SECONDS  # 0 or less: no polling, only POST /reload
    max_rows: int = DEFAULT_MAX_ROWS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    force_reload_seconds: float = DEFAULT_FORCE_RELOAD_SECONDS
    serving_token: str | None = dataclasses.field(default=None, repr=False)  # repr=False: never in a log line
    prediction_log_url: str | None = dataclasses.field(default=None, repr=False)  # may carry a password
    prediction_log_sample: float = DEFAULT_PREDICTION_LOG_SAMPLE
    prediction_log_buffer: int = DEFAULT_PREDICTION_LOG_BUFFER

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, got {self.max_body_bytes}")
        if not 0.0 <= self.prediction_log_sample <= 1.0:
            raise ValueError(f"prediction_log_sample must be between 0 and 1, got {self.prediction_log_sample}")
        if self.prediction_log_buffer < 1:
            raise ValueError(f"prediction_log_buffer must be at least 1, got {self.prediction_log_buffer}")
        if not (self.prediction_log_url or "").strip():
            object.__setattr__(self, "prediction_log_url", None)
        if not self.serving_token:
            object.__setattr__(self, "serving_token", None)  # an empty token would let an empty header in

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from the environment; raises RuntimeError/ValueError naming the variable that is wrong."""
        environ = os.environ if environ is None else environ
        tracking_uri = environ.get(ENV_TRACKING_URI, "").strip()
        if not tracking_uri:
            # Failing loudly beats silently creating an empty local store and answering 503 forever.
            raise RuntimeError(f"{ENV_TRACKING_URI} is not set; point it at the MLflow tracking/registry store")
        return cls(
            tracking_uri=tracking_uri,
            model_name=environ.get(ENV_MODEL_NAME) or DEFAULT_MODEL_NAME,
            alias=environ.get(ENV_ALIAS) or DEFAULT_ALIAS,
            poll_seconds=_seconds(environ, ENV_POLL_SECONDS, DEFAULT_POLL_SECONDS),
            max_rows=_positive_int(environ, ENV_MAX_ROWS, DEFAULT_MAX_ROWS),
            max_body_bytes=_positive_int(environ, ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES),
            force_reload_seconds=_seconds(environ, ENV_FORCE_RELOAD_SECONDS, DEFAULT_FORCE_RELOAD_SECONDS),
            serving_token=serving_token_from(environ),
            prediction_log_url=environ.get(ENV_PREDICTION_LOG_URL, "").strip() or None,
            prediction_log_sample=_fraction(environ, ENV_PREDICTION_LOG_SAMPLE, DEFAULT_PREDICTION_LOG_SAMPLE),
            prediction_log_buffer=_positive_int(environ, ENV_PREDICTION_LOG_BUFFER, DEFAULT_PREDICTION_LOG_BUFFER),
        )


def serving_token_from(environ: Mapping[str, str]) -> str | None:
    """The configured bearer token, or None when it is unset or blank."""
    return environ.get(ENV_SERVING_TOKEN, "").strip() or None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _fraction(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a fraction between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction between 0 and 1, got {value}")
    return value
