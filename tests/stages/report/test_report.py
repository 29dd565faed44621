"""The per-run report on real runs' records: the library stages (crawl -> etl -> resolved config -> train ->
select_best -> validate) run on public datasets served over HTTP by the bundled data source, on a CSV with hostile
names, and the report read back: its sections, its embedded PNGs (decoded and opened), its escaping."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.dev.datasource import DataSourceServer
from mlpipeline.dev.public_datasets import DATASETS_PATH
from mlpipeline.registry import DATA_SHA256_TAG, TRAINING_FINGERPRINT_TAG, training_fingerprint, use_tracking
from mlpipeline.stages.crawl import crawl
from mlpipeline.stages.etl import etl, resolved_config
from mlpipeline.stages.monitor.drift import DriftReport
from mlpipeline.stages.monitor.live import LiveChecks
from mlpipeline.stages.monitor.report import REPORT_FILE, MlflowRecord, MonitorReport
from mlpipeline.stages.notify import Email
from mlpipeline.stages.report import build_report, summary_png
from mlpipeline.stages.report.publish import publish_report, with_report
from mlpipeline.stages.train import train
from mlpipeline.stages.validate import check_data, select_best, validate
from mlpipeline.storage import DataLayout, atomic_write_json, read_json, sha256_file

SECTIONS = ("decision", "candidates", "champion", "confusion", "roc-pr", "calibration", "residuals", "importance")
SECTIONS += ("profile", "quarantine", "drift", "deployment", "timings")
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Few, quick candidates: the report is under test, not the models.
QUICK = {
    "logistic_regression": {},
    "hist_gradient_boosting": {"max_iter": 20},
    "random_forest": {"n_estimators": 15},
    "ridge": {},
}


@dataclass(frozen=True)
class Run:
    config: PipelineConfig
    run: str
    sha256: str
    raw_path: str


@pytest.fixture(scope="module")
def source() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=200) as server:
        yield server


def _config(root: Path, url: str, target: str, model_types: list[str], **settings: object) -> PipelineConfig:
    return build_config(
        {
            "crawl_url": url,
            "data_dir": str(root / "data"),
            "dataset_schema": {"target": target},
            "candidates": [{"ml_model_type": t, "hyperparameters": QUICK[t]} for t in model_types],
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "mlflow_artifact_location": str(root / "artifacts"),
            "registered_model_name": f"report_{root.name}",
            **settings,
        }
    )


def _trained_run(declared: PipelineConfig, run: str, raw_path: str, raw_format: str, sha256: str) -> Run:
    """etl -> resolved config (frozen as the DAG does) -> train every candidate -> select_best -> validate."""
    cleaned = etl(declared, run=run, raw_data_path=raw_path, raw_format=raw_format)
    config = resolved_config(declared, cleaned)
    atomic_write_json(
        DataLayout.of(config.data_dir).run_records(run) / "config.resolved.json", config.model_dump(mode="json")
    )
    trained = [
        train(config, run=run, processed_data_path=cleaned.data_path, data_sha256=sha256, candidate=candidate)
        for candidate in config.training_candidates()
    ]
    best, ranking = select_best(trained, str(config.validation_metric))
    validate(config, run=run, candidate=best, ranking=ranking)
    return Run(config, run, sha256, raw_path)


def _crawled_run(root: Path, source: DataSourceServer, name: str, target: str, models: list[str], **kw: object) -> Run:
    declared = _config(root, f"{source.url}{DATASETS_PATH}/{name}.csv", target, models, **kw)
    crawled = crawl(declared, "r1")
    return _trained_run(declared, "r1", crawled.data_path, crawled.format, crawled.sha256)


def _monitor_record(run: Run) -> None:
    """monitor.json as the monitor stage writes it (MonitorReport.to_record) with real drift statistics: the
    current data is the reference with one feature shifted. No endpoint was probed (live checks empty)."""
    config, layout = run.config, DataLayout.of(run.config.data_dir)
    reference_path = layout.processed(run.run) / "features.parquet"
    reference = pd.read_parquet(reference_path)
    current = reference.copy()
    shifted = config.dataset_schema.feature_names[0]
    current[shifted] = current[shifted] + 3 * current[shifted].std()
    drift = DriftReport.measure(
        reference,
        current,
        config.dataset_schema,
        psi_threshold=0.2,
        ks_pvalue=0.01,
        reference_path=str(reference_path),
        current_path="current.parquet",
        task=config.task,
    )
    path = layout.run_records(run.run) / REPORT_FILE
    report = MonitorReport(
        run=run.run,
        checked_at="2026-01-01T00:00:00+00:00",
        serving_url="http://127.0.0.1:1",
        model_name=config.registered_model_name,
        expected_version="1",
        live=LiveChecks(latency_budget_ms=500.0),
        drift=drift,
        alerts=tuple(drift.alerts()),
        monitoring_errors=(),
        report_path=str(path),
        mlflow=MlflowRecord(config.mlflow_tracking_uri),
    )
    atomic_write_json(path, report.to_record())


def _make_champion(run: Run, declared: PipelineConfig) -> str:
    """Register the run's judged candidate and point the champion alias at it, tagged as deploy tags it."""
    client = use_tracking(run.config)
    layout = DataLayout.of(run.config.data_dir)
    judged = read_json(layout.run_records(run.run) / "validate.json")["candidate"]
    uri = read_json(layout.models(run.run) / judged / "train.json")["model_uri"]
    tags = {DATA_SHA256_TAG: run.sha256, TRAINING_FINGERPRINT_TAG: training_fingerprint(declared)}
    version = str(mlflow.register_model(uri, run.config.registered_model_name, tags=tags).version)
    client.set_registered_model_alias(run.config.registered_model_name, run.config.champion_alias, version)
    return version


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory, source: DataSourceServer) -> dict[str, Run]:
    """r1: two candidates, deployed by decision, with a monitor record; then the champion is r1's model and r2
    (one candidate, log_loss must reach 0) is rejected; r3 finds data and training unchanged."""
    root = tmp_path_factory.mktemp("binary")
    models = ["logistic_regression", "hist_gradient_boosting"]
    first = _crawled_run(root, source, "breast_cancer", "diagnosis", models)
    _monitor_record(first)
    declared = _config(root, first.config.crawl_url, "diagnosis", models)
    _make_champion(first, declared)
    strict = _config(root, first.config.crawl_url, "diagnosis", ["logistic_regression"])
    strict = strict.model_copy(update={"validation_metric": "log_loss", "metric_threshold": 0.0})
    rejected = _trained_run(strict, "r2", first.raw_path, "csv", first.sha256)
    unchanged = check_data(declared, run="r3", data_sha256=first.sha256)
    assert unchanged.unchanged, unchanged.reason
    return {"r1": first, "r2": rejected, "r3": Run(declared, "r3", first.sha256, first.raw_path)}


def _images(page: str) -> list[tuple[int, int]]:
    """Every embedded image decoded: a real PNG with a size."""
    sizes = []
    for encoded in IMAGE.findall(page):
        data = base64.b64decode(encoded, validate=True)
        sizes.append(_png_size(data))
    return sizes


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as picture:
        picture.verify()
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.width > 0 and picture.height > 0
        return picture.size


def _sections(page: str) -> dict[str, str]:
    """Each section's HTML by its id."""
    found = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))
    assert set(found) == set(SECTIONS), set(SECTIONS) ^ set(found)
    return found


def _report(run: Run) -> tuple[Path, str, dict[str, str]]:
    path = build_report(run.config, run=run.run)
    page = path.read_text(encoding="utf-8")
    return path, page, _sections(page)


def test_binary_run_report(binary: dict[str, Run]) -> None:
    path, page, sections = _report(binary["r1"])
    assert path == DataLayout.of(binary["r1"].config.data_dir).run_records("r1") / "report.html"
    assert "<script" not in page and "<link" not in page and 'src="http' not in page  # self-contained
    assert 'class="verdict deploy"' in sections["decision"] and "no champion yet" in sections["decision"]
    assert "logistic_regression" in sections["candidates"] and "hist_gradient_boosting" in sections["candidates"]
    assert "roc_auc" in sections["candidates"] and "not available" not in sections["champion"]
    for name in ("confusion", "roc-pr", "calibration", "importance", "profile", "drift", "timings"):
        assert "not available" not in sections[name] and "<img" in sections[name], name
    assert sections["confusion"].count("<img") == 2  # one per candidate
    assert "not available: residuals are drawn for regression" in sections["residuals"]
    assert "features.parquet (run r1)" in sections["drift"] and "PSI per feature" in sections["drift"]
    assert "not available: deploy.json is absent" in sections["deployment"]
    assert len(_images(page)) >= 10


def test_rejected_run_report_compares_the_champion(binary: dict[str, Run]) -> None:
    _, page, sections = _report(binary["r2"])
    assert 'class="verdict reject"' in sections["decision"] and "threshold 0.0000" in sections["decision"]
    assert "champion v1 was scored on the candidate" in sections["champion"] and "<img" in sections["champion"]
    rejected = "not available: the candidate was rejected, so nothing was deployed or monitored"
    assert rejected in sections["deployment"] and rejected in sections["drift"]
    assert len(_images(page)) >= 7


def test_unchanged_and_empty_runs_degrade(binary: dict[str, Run], tmp_path: Path) -> None:
    _, page, sections = _report(binary["r3"])
    assert 'class="verdict unchanged"' in sections["decision"]
    for name in SECTIONS[1:]:
        assert "not available: the run stopped after check_data" in sections[name], name
    assert _images(page) == []
    out = build_report(binary["r3"].config, run="never-ran", out_path=tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html"
    empty = _sections(out.read_text(encoding="utf-8"))
    assert all("not available" in body for body in empty.values())


def test_summary_png_is_a_small_valid_image(binary: dict[str, Run]) -> None:
    for run in binary.values():
        width, height = _png_size(summary_png(run.config, run=run.run))
        assert 0 < width <= 800 and 0 < height <= 400
    assert _png_size(summary_png(binary["r1"].config, run="never-ran"))


def test_multiclass_run_report(tmp_path_factory: pytest.TempPathFactory, source: DataSourceServer) -> None:
    run = _crawled_run(tmp_path_factory.mktemp("iris"), source, "iris", "species", ["logistic_regression"])
    _, page, sections = _report(run)
    assert run.config.task == "multiclass" and 'class="verdict deploy"' in sections["decision"]
    assert "not available" not in sections["confusion"] and "<img" in sections["confusion"]
    assert "not available: ROC and precision-recall curves are drawn for binary" in sections["roc-pr"]
    assert "not available" not in sections["importance"] and "petal" in sections["importance"]
    assert "rows per class" in sections["profile"]
    assert len(_images(page)) >= 5


def test_regression_run_report(tmp_path_factory: pytest.TempPathFactory, source: DataSourceServer) -> None:
    models = ["ridge", "hist_gradient_boosting"]
    run = _crawled_run(tmp_path_factory.mktemp("diabetes"), source, "diabetes", "progression", models)
    _, page, sections = _report(run)
    assert run.config.task == "regression"
    assert "rmse" in sections["candidates"] and "ridge" in sections["candidates"]
    assert "not available" not in sections["residuals"] and "<img" in sections["residuals"]
    assert "not available: a confusion matrix needs classes" in sections["confusion"]
    assert "not available" not in sections["importance"]
    assert len(_images(page)) >= 4


def test_text_from_the_data_is_escaped(tmp_path: Path) -> None:
    """Column names and class labels written to attack the page show as text, and still chart (a "$" in a name
    would otherwise start matplotlib's math mode)."""
    script, tag, dollars = "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "cost $a_{b}$ & co"
    target = "<i>kind</i>"
    rng = np.random.default_rng(0)
    labels = np.array([script, "a&b", '"quoted"'])[np.arange(150) % 3]
    frame = pd.DataFrame({tag: rng.normal(size=150) + (np.arange(150) % 3), dollars: rng.integers(0, 4, 150) + 0.5})
    frame[target] = labels
    frame.loc[[5, 6], target] = None  # quarantined: missing target
    raw = tmp_path / "hostile.csv"
    frame.to_csv(raw, index=False)
    declared = _config(tmp_path, "http://127.0.0.1:9/hostile.csv", target, ["logistic_regression"])
    run = _trained_run(declared, "r1", str(raw), "csv", sha256_file(raw))
    _, page, sections = _report(run)
    for hostile in (script, tag, target):
        assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sections["profile"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in sections["importance"]
    assert "cost $a_{b}$ &amp; co" in sections["importance"]
    assert "<img" in sections["confusion"] and "not available" not in sections["confusion"]
    assert "&lt;i&gt;kind&lt;/i&gt;: missing target" in sections["quarantine"] and "<img" in sections["quarantine"]
    assert "<i>" not in page
    assert len(_images(page)) >= 5


def test_published_report_is_logged_to_the_chosen_candidates_run_and_rides_the_email(
    binary: dict[str, Run], tmp_path: Path
) -> None:
    """The rejected run r2: its report goes to its judged candidate's MLflow run (again on a retry, still one
    file) and into the email: attached, its summary inline, where it is kept said in the body."""
    run = binary["r2"]
    layout = DataLayout.of(run.config.data_dir)
    judged = read_json(layout.run_records("r2") / "validate.json")["candidate"]
    mlflow_run_id = read_json(layout.models("r2") / judged / "train.json")["mlflow_run_id"]
    for _ in range(2):
        published = publish_report(run.config, run="r2", mlflow_run_id=mlflow_run_id)
    assert published.problems == () and published.mlflow_uri == f"runs:/{mlflow_run_id}/report/report.html"
    client = MlflowClient(run.config.mlflow_tracking_uri)
    assert [a.path for a in client.list_artifacts(mlflow_run_id, "report")] == ["report/report.html"]
    logged = mlflow.artifacts.download_artifacts(
        run_id=mlflow_run_id,
        artifact_path="report/report.html",
        dst_path=str(tmp_path),
        tracking_uri=run.config.mlflow_tracking_uri,
    )
    assert Path(logged).read_bytes() == published.html_path.read_bytes()
    assert _sections(Path(logged).read_text(encoding="utf-8"))["decision"].count('class="verdict reject"') == 1

    email = with_report(Email(subject="s", html="<h2>The candidate model was not deployed</h2>"), published)
    [attachment] = email.attachments
    assert attachment.filename == "report.html" and attachment.content == published.html_path.read_bytes()
    [image] = email.inline_images
    assert email.html.startswith(f'<p><img src="cid:{image.content_id}"') and _png_size(image.content)
    assert published.mlflow_uri in email.html and "Not available" not in email.html


def test_a_report_that_cannot_be_logged_is_still_attached(binary: dict[str, Run]) -> None:
    published = publish_report(binary["r1"].config, run="r1", mlflow_run_id="0" * 32)
    assert published.html_path is not None and published.mlflow_uri is None
    [problem] = published.problems
    assert problem.startswith(f"the report could not be logged to MLflow run {'0' * 32}: ")
    email = with_report(Email(subject="s", html="<h2>x</h2>"), published)
    assert [a.filename for a in email.attachments] == [
        "report.html"
    ] and "Not available: the report could not" in email.html
