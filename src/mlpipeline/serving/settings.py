"""The server's settings: from the environment (``uvicorn --factory``), the command line mapping onto it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from mlpipeline.constants import DEFAULT_ALIAS, DEFAULT_MODEL_NAME

DEFAULT_POLL_SECONDS = 10.0
DEFAULT_MAX_ROWS = 10_000

# The environment variables read by app_from_env (and set by ``python -m mlpipeline.serving`` from its options).
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MODEL_NAME = "MLPIPELINE_MODEL_NAME"
ENV_ALIAS = "MLPIPELINE_MODEL_ALIAS"
ENV_POLL_SECONDS = "MLPIPELINE_POLL_SECONDS"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What one server app serves and how: the registry, the registered model and alias, polling, request size."""

    tracking_uri: str
    model_name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_ALIAS
    poll_seconds: float = DEFAULT_POLL_SECONDS  # 0 or less: no polling, only POST /reload
    max_rows: int = DEFAULT_MAX_ROWS

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
        )


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
