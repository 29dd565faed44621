"""What every command shares: exit codes, the one-line refusal, and reading the pipeline's settings outside Airflow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlpipeline.config import FIELD_NAMES, THRESHOLD_ALIASES, ConfigError, PipelineConfig, load_config

EXIT_OK = 0
EXIT_FAILED = 1  # a stage failed: the message names it and says why
EXIT_BAD_INPUT = 2  # argparse's own code for bad arguments: one code for "what you gave me does not work"

ENV_PREFIX = "MLPIPELINE_"
CONFIG_HELP = (
    "Settings: a JSON file of {setting: value} (--config), each one overridden by the environment variable"
    " MLPIPELINE_<SETTING> (e.g. MLPIPELINE_CRAWL_URL), the same settings as the Airflow Variables; unset ones take"
    " their defaults."
)


def refuse(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)  # one line, whatever the message holds
    return EXIT_BAD_INPUT


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON file of settings, {name: value}, the names of the Airflow Variables (e.g. a run's config.json).",
    )


def read_settings_file(path: str | None) -> dict[str, Any]:
    """The settings of a ``--config`` file; a run's frozen ``config.json`` works as it is. Unknown names are
    errors (a typo would otherwise silently leave the default)."""
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"the config file {path} must hold a JSON object of settings, got {type(values).__name__}")
    values.pop("declared", None)  # what a resolved run config records about itself, not a setting
    unknown = sorted(str(name)[:100] for name in values if name not in FIELD_NAMES and name not in THRESHOLD_ALIASES)
    if unknown:
        raise ConfigError(f"the config file {path}: unknown setting(s) {', '.join(unknown)}")
    return values


def settings_lookup(file_values: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Any:
    """The lookup ``load_config`` takes: ``MLPIPELINE_<NAME>`` from the environment, else the file's value."""

    def lookup(name: str) -> Any:
        from_env = environ.get(ENV_PREFIX + name.upper())
        return from_env if from_env is not None else file_values.get(name)

    return lookup


def cli_config(
    path: str | None, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
) -> PipelineConfig:
    """The pipeline's config as the DAG's ``start`` builds it, with the file and the environment in place of the
    Airflow Variables and ``overrides`` in place of a run's conf (the same rule: training and judging only)."""
    try:
        return load_config(settings_lookup(read_settings_file(path), environ), overrides)
    except ConfigError as exc:
        message = str(exc).replace("(set the Airflow Variable instead)", "(set it in --config or MLPIPELINE_<NAME>)")
        raise ConfigError(message) from None


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``--set name=value`` pairs; values as the Variables take them (JSON for numbers, lists and objects)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set takes name=value, got {pair!r}")
        try:
            values[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            values[name.strip()] = value  # plain text, e.g. --set ml_model_type=random_forest
    return values
