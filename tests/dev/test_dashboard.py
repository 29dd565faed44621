"""The Grafana dashboard (deploy/grafana/dashboards/model-serving.json) asks for what exists: every metric its
Prometheus queries name is in a real model server's /metrics, every query is valid PromQL (promtool), every SQL
panel runs against the prediction log's tables on a real PostgreSQL, and every data source it uses is provisioned
from variables the compose file gives Grafana."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, text

from mlpipeline.dev.localstack import REPO_ROOT
from mlpipeline.prediction_store import create_tables, engine_for, monitoring_checks, monitoring_drift
from mlpipeline.serving.app import app_from_env
from tests import model_factory as mf
from tests import services
from tests.dev.test_compose import _env_file, compose_config

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "model-serving.json"
PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"
# The names the preamble's contract gives the model server's metrics that the dashboard must show.
REQUIRED_METRICS = {
    "mlpipeline_serving_requests_total",
    "mlpipeline_serving_request_latency_seconds_bucket",
    "mlpipeline_serving_model_version",
    "mlpipeline_serving_predicted_labels_total",
    "mlpipeline_serving_prediction_log_dropped_total",
    "mlpipeline_serving_prediction_log_queue_depth",
}
# PromQL words that are not metric names (operators, modifiers); functions are recognised by their "(".
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan"}


def _targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def _exprs() -> list[str]:
    return [target["expr"] for _, target in _targets() if "expr" in target]


def _sql_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["rawSql"]) for panel, target in _targets() if "rawSql" in target]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, label names or keywords)."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals (label values)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors
    # Label lists of aggregations and vector matching: by (a, b), ignoring(label), group_left(x)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", stripped):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{endpoint="/predict",x=~"5.."}[5m]))) / '
        "ignoring(label) group_left clamp_min(sum(rate(b_total[15m])), 1e-9) + on(job) c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_shows_what_the_contract_names() -> None:
    used = set().union(*(metric_names(expr) for expr in _exprs()))
    assert used >= REQUIRED_METRICS, REQUIRED_METRICS - used
    latency = [expr for expr in _exprs() if "histogram_quantile" in expr]
    assert latency and all("mlpipeline_serving_request_latency_seconds_bucket" in expr for expr in latency)
    sql = " ".join(query for _, query in _sql_queries())
    assert "monitoring_checks" in sql and "monitoring_drift" in sql and "verdict" in sql and "psi" in sql


def _exposed_sample_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The sample names of a real model server's /metrics after it answered /predict (labelled series exist)."""
    registry = mf.registry()
    registry.register(registry.base(0), "dashboard_metrics")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("MLPIPELINE_MODEL_NAME", "dashboard_metrics")
    monkeypatch.setenv("MLPIPELINE_POLL_SECONDS", "0")
    monkeypatch.setenv("MLPIPELINE_PREDICTION_LOG_URL", f"sqlite:///{tmp_path / 'prediction-log.db'}")
    with TestClient(app_from_env()) as client:
        answered = client.post("/predict", json={"rows": mf.rows_for_request(mf.make_frame(5, seed=3))})
        assert answered.status_code == 200, answered.text
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
    return {sample.name for family in text_string_to_metric_families(metrics.text) for sample in family.samples}


def test_every_metric_the_dashboard_queries_is_exposed_by_the_model_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exposed = _exposed_sample_names(tmp_path, monkeypatch)
    missing = {expr: sorted(metric_names(expr) - exposed) for expr in _exprs() if metric_names(expr) - exposed}
    assert not missing, f"not in the model server's /metrics: {missing}"


def test_every_prometheus_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed; install it (as root) with: apt-get install -y prometheus")
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for index, expr in enumerate(_exprs()):
        rules["groups"][0]["rules"].append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_exprs())} rules found" in result.stdout


def _grafana_macros(query: str, start: float, end: float) -> str:
    """Grafana's PostgreSQL macros the dashboard uses, expanded as Grafana expands them."""
    return re.sub(r"\$__unixEpochFilter\(([^)]+)\)", rf"\1 >= {int(start)} AND \1 <= {int(end)}", query)


def _monitoring_rows(engine: Any, now: float) -> None:
    create_tables(engine)
    with engine.begin() as connection:
        for index, (verdict, psi) in enumerate([("healthy", 0.05), ("degraded", 0.4)]):
            check_id = f"scheduled__{index}"
            connection.execute(
                insert(monitoring_checks).values(
                    check_id=check_id,
                    checked_at=now - 3600 + index * 600,
                    model_name="churn_classifier",
                    model_version=str(3 + index),
                    verdict=verdict,
                    window_start=now - 7200,
                    window_end=now - 3600 + index * 600,
                    predictions=500,
                    with_feedback=250,
                    metric="accuracy",
                    live_score=0.8 - index * 0.1,
                    validation_score=0.82,
                    error_rate=0.0,
                    latency_p95_ms=12.5,
                    details={"reasons": [verdict]},
                )
            )
            for feature, value in [("tenure_months", psi), ("__prediction__", psi / 2)]:
                connection.execute(
                    insert(monitoring_drift).values(
                        check_id=check_id, feature=feature, psi=value, ks_pvalue=0.2, drifted=int(value > 0.2)
                    )
                )


def test_every_sql_panel_runs_on_the_prediction_log_tables() -> None:
    queries = _sql_queries()
    assert len(queries) >= 4
    now = time.time()
    with services.postgres_server() as pg, services.databases(pg, "dashboard") as (name,):
        engine = engine_for(f"postgresql+psycopg2://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}")
        try:
            _monitoring_rows(engine, now)
            with engine.connect() as connection:
                for title, query in queries:
                    rows = connection.execute(text(_grafana_macros(query, now - 6 * 3600, now))).mappings().all()
                    assert rows, f"panel {title!r} found nothing in the prediction log"
                    if "time" in rows[0]:
                        assert all(row["time"] is not None for row in rows), title
                latest = next(query for title, query in queries if title == "Drift of the latest check")
                drift = connection.execute(text(latest)).mappings().all()
        finally:
            engine.dispose()
    # The latest check's drift, most drifted first.
    assert [(row["feature"], row["status"]) for row in drift] == [
        ("tenure_months", "drifted"),
        ("__prediction__", "ok"),
    ]


def test_the_dashboard_uses_only_provisioned_data_sources() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())["datasources"]
    by_uid = {source["uid"]: source for source in provisioned}
    for panel, target in _targets():
        for reference in (panel["datasource"], target["datasource"]):
            assert reference["uid"] in by_uid, panel["title"]
            assert reference["type"] == by_uid[reference["uid"]]["type"], panel["title"]
    assert {by_uid["prometheus"]["type"], by_uid["prediction-log"]["type"]} == {"prometheus", "postgres"}
    assert "password" not in json.dumps(provisioned[1].get("jsonData", {}))  # only in secureJsonData


def test_grafana_gets_every_variable_its_provisioning_reads(tmp_path: Path) -> None:
    env_file, values = _env_file(tmp_path)
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    grafana = yaml.safe_load(result.stdout)["services"]["grafana"]
    environment = grafana["environment"]
    provisioning = " ".join(path.read_text() for path in PROVISIONING.rglob("*.yaml"))
    referenced = set(re.findall(r"\$\{?([A-Z_]+)\}?", provisioning))
    assert referenced and referenced <= set(environment), referenced - set(environment)
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == values["GRAFANA_ADMIN_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["PREDICTION_LOG_READER_PASSWORD"] == values["PREDICTION_LOG_READER_PASSWORD"]
    # The dashboard provider reads the directory the dashboards are mounted at.
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())["providers"][0]
    # docker-compose 1.x renders a mount as "source:target:mode"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts[provider["options"]["path"]].endswith("deploy/grafana/dashboards")
    assert mounts["/etc/grafana/provisioning"].endswith("deploy/grafana/provisioning")
