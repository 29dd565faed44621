"""``docker-compose.yaml`` read the way compose reads it, for the process stack (:mod:`mlpipeline.dev.stack`).

Compose's variable substitution, the services as commands + environment, the services that run only under compose
(and what stands in for them locally), and Prometheus's configuration rendered with local scrape targets.
Nothing here imports Airflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlpipeline.dev.localstack import REPO_ROOT, StackError

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Given to the stack (the machine's own servers, or managed ones), not started by it.
EXTERNAL_SERVICES = ("postgres", "redis")


@dataclass(frozen=True)
class StandIn:
    """A local program standing in for a compose-only service: its argv in compose's syntax (interpolated with the
    stack's variables like a compose service's), restarted like compose's ``restart: always``."""

    argv: tuple[str, ...]
    restart: str = "always"


# Compose services the process stack cannot run (no local binary), each with what runs in its place, or None.
# The one list: tests/dev/test_stack.py checks compose has exactly these beyond what the process stack runs.
COMPOSE_ONLY_SERVICES: dict[str, StandIn | None] = {
    # Mailpit (SMTP + web UI): our mail catcher takes its SMTP port and stores each message as an .eml file.
    "mailpit": StandIn(
        (
            "python",
            "-m",
            "mlpipeline.dev.mailcatcher",
            "--host",
            "${BIND_HOST:-0.0.0.0}",
            "--port",
            "${SMTP_PORT:-1025}",
            "--dir",
            "${MAIL_DIR:-/mail}",
        )
    ),
    # Grafana: nothing; Prometheus's own UI (the process stack runs it) answers the dashboard's queries.
    "grafana": None,
}

# Prometheus's targets (deploy/prometheus/prometheus.yml: "<compose service>:<port>"), by the variable of the port
# each service listens on: the process stack renders them as 127.0.0.1:<its port>.
PROMETHEUS_TARGET_PORTS: dict[str, str] = {"model-server": "MODEL_SERVER_PORT", "flower": "FLOWER_PORT"}

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        value = env.get(name)
        unset = value is None or (operator is not None and operator.startswith(":") and value == "")
        if operator in (":-", "-") and unset:
            return interpolate(argument, env)
        if operator in (":?", "?") and unset:
            raise StackError(f"{name}: {argument or 'required variable is not set'}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)  # resolves the YAML anchors and merge keys (<<: *airflow-common)


@dataclass(frozen=True)
class ServiceSpec:
    """One compose service, interpolated: what runs, with which environment."""

    name: str
    argv: list[str]
    environment: dict[str, str]
    health_url: str | None
    restart: str = "no"  # compose's restart policy


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(item) for item in value]


def _health_url(service: dict[str, Any]) -> str | None:
    test = " ".join(_as_list(service.get("healthcheck", {}).get("test")))
    match = re.search(r"http://localhost:\d+/\S*", test)
    return match.group(0).rstrip("'\"") if match else None


def resolve_services(compose: dict[str, Any], env: Mapping[str, str]) -> dict[str, ServiceSpec]:
    """Every service that runs locally from its own compose command (not the external or compose-only ones), with
    compose's interpolation applied."""
    specs = {}
    for name, raw in compose["services"].items():
        if name in EXTERNAL_SERVICES or name in COMPOSE_ONLY_SERVICES:
            continue
        service = _interpolate_tree(raw, env)
        environment = {
            key: "" if value is None else str(value) for key, value in service.get("environment", {}).items()
        }
        specs[name] = ServiceSpec(
            name=name,
            argv=_as_list(service.get("entrypoint")) + _as_list(service.get("command")),
            environment=environment,
            health_url=_health_url(service),
            restart=str(service.get("restart", "no")),
        )
    return specs


def stand_in_services(env: Mapping[str, str]) -> dict[str, ServiceSpec]:
    """What runs locally in place of the compose-only services that have a stand-in, by compose service name."""
    return {
        name: ServiceSpec(
            name=name,
            argv=[interpolate(word, env) for word in stand_in.argv],
            environment={},
            health_url=None,
            restart=stand_in.restart,
        )
        for name, stand_in in COMPOSE_ONLY_SERVICES.items()
        if stand_in is not None
    }


def render_prometheus_config(text: str, ports: Mapping[str, int], defaults: Mapping[str, int], host: str) -> str:
    """deploy/prometheus/prometheus.yml with each ``<compose service>:<default port>`` target at ``host`` and the
    service's port in ``ports`` (a port variable -> port); an unknown target or a port that is not compose's default
    is an error (the file and the compose file drifted apart)."""
    config = yaml.safe_load(text)
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            static["targets"] = [
                _local_target(target, ports, defaults, host, job["job_name"]) for target in static["targets"]
            ]
    return yaml.safe_dump(config, sort_keys=False)


def _local_target(target: str, ports: Mapping[str, int], defaults: Mapping[str, int], host: str, job: str) -> str:
    service, _, port = target.rpartition(":")
    variable = PROMETHEUS_TARGET_PORTS.get(service)
    if variable is None:
        raise StackError(f"prometheus job {job}: target {target!r} is not a service the process stack knows")
    if port != str(defaults[variable]):
        raise StackError(f"prometheus job {job}: {target!r} is not {service}'s port {defaults[variable]}")
    return f"{host}:{ports[variable]}"
