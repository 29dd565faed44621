"""The report on its way to people: written (``runs/<run>/report.html``), logged to the chosen candidate's MLflow
run (``report/report.html``), and carried by the run's email — attached, with its summary picture in the body.

Nothing here may lose the email: a report that cannot be built, drawn or logged is left out (or not logged), the
email says why, and a warning is logged. Safe to repeat (a retried email task writes and logs the same file again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path
from typing import TypeVar

from mlpipeline.config import PipelineConfig
from mlpipeline.registry import log_run_artifact
from mlpipeline.stages.notify import Attachment, Email, InlineImage, inline_image_id
from mlpipeline.stages.report.render import REPORT_FILE, build_report, summary_png

log = logging.getLogger(__name__)
T = TypeVar("T")

REPORT_ARTIFACT_PATH = "report"
# Larger reports stay in runs/<run>/ and MLflow: mail servers commonly refuse messages above 10-25 MB, and base64
# adds a third.
MAX_ATTACHED_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PublishedReport:
    """What became of one run's report: its file, its summary picture, where MLflow keeps it, and what failed."""

    run: str
    html_path: Path | None = None
    summary: bytes | None = None
    mlflow_uri: str | None = None
    problems: tuple[str, ...] = ()


def publish_report(config: PipelineConfig, *, run: str, mlflow_run_id: str | None = None) -> PublishedReport:
    """Write the run's report and its summary picture and, given the MLflow run of the chosen candidate, log the
    report there as ``report/report.html``. Never raises: what failed is in ``problems``."""
    problems: list[str] = []
    html_path = _attempt(problems, "the report could not be built", lambda: build_report(config, run=run))
    summary = _attempt(problems, "the summary picture could not be drawn", lambda: summary_png(config, run=run))
    mlflow_uri = None
    if html_path is not None and mlflow_run_id:
        mlflow_uri = _attempt(
            problems,
            f"the report could not be logged to MLflow run {mlflow_run_id}",
            lambda: log_run_artifact(config, mlflow_run_id, html_path, REPORT_ARTIFACT_PATH),
        )
    return PublishedReport(run, html_path, summary, mlflow_uri, tuple(problems))


def _attempt(problems: list[str], what: str, action: Callable[[], T]) -> T | None:
    try:
        return action()
    except Exception as exc:  # the email goes out regardless; it says what went wrong
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
        log.warning("%s: %s", what, exc, exc_info=True)
        return None


def with_report(email: Email, report: PublishedReport) -> Email:
    """``email`` carrying the report: its summary picture at the top of the body (inline), the HTML attached, and a
    closing "Report" section saying where it is kept — or why it is missing."""
    attachments, notes = list(email.attachments), []
    if report.html_path is not None:
        size = report.html_path.stat().st_size
        if size <= MAX_ATTACHED_BYTES:
            attachments.append(Attachment(REPORT_FILE, report.html_path.read_bytes(), "text/html"))
            notes.append(f"The full report is attached ({REPORT_FILE}; open it in a browser).")
        else:
            notes.append(f"The full report is {size / 2**20:.1f} MiB, too large to attach.")
        notes.append(f"On the pipeline's disk: {report.html_path}.")
    if report.mlflow_uri:
        notes.append(f"In MLflow: {report.mlflow_uri} (the chosen candidate's run, artifact {REPORT_ARTIFACT_PATH}/).")
    notes += [f"Not available: {problem}" for problem in report.problems]
    html, images = email.html, list(email.inline_images)
    if report.summary is not None:
        image = InlineImage(inline_image_id("summary"), report.summary)
        images.append(image)
        picture = (
            f'<p><img src="cid:{escape(image.content_id, quote=True)}" alt="run {escape(report.run)} summary"></p>'
        )
        html = f"{picture}\n{html}"
    section = "<h3>Report</h3>" + "".join(f"<p>{escape(note)}</p>" for note in notes)
    return replace(email, html=f"{html}\n{section}", attachments=tuple(attachments), inline_images=tuple(images))
