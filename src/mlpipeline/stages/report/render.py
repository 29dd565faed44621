"""The per-run report: one self-contained HTML page (charts embedded as PNG, no external CSS or JS) written
atomically to ``<data_dir>/runs/<run>/report.html``, and a small PNG summary for an email."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlpipeline.config import PipelineConfig
from mlpipeline.stages.report import data_sections, model_sections, plots
from mlpipeline.stages.report.context import ReportContext
from mlpipeline.stages.report.markup import STYLE, esc, section, unavailable
from mlpipeline.stages.report.records import RunRecords, load_run_records
from mlpipeline.storage import atomic_write_text

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"

# (anchor, title, body): in the order a reader asks "what was decided, why, on what data".
SECTIONS: tuple[tuple[str, str, Callable[[ReportContext], str]], ...] = (
    ("decision", "Decision", model_sections.decision),
    ("candidates", "Candidates", model_sections.candidates),
    ("champion", "Champion vs challenger", model_sections.champion_vs_challenger),
    ("confusion", "Confusion matrix", model_sections.confusion_matrices),
    ("roc-pr", "ROC and precision-recall", model_sections.roc_and_precision_recall),
    ("calibration", "Calibration", model_sections.calibration),
    ("residuals", "Residuals and predicted vs actual", model_sections.residuals),
    ("importance", "Permutation importance", model_sections.permutation_importance),
    ("profile", "Data profile", data_sections.data_profile),
    ("quarantine", "Quarantine", data_sections.quarantine),
    ("drift", "Drift", data_sections.drift),
    ("deployment", "Deployment", data_sections.deployment),
    ("timings", "Timings", data_sections.timings),
)


def _section_body(context: ReportContext, title: str, body: Callable[[ReportContext], str]) -> str:
    """A section that cannot be drawn says why instead of failing the whole report."""
    try:
        return body(context)
    except Exception as exc:
        log.warning("report section %r of run %s failed: %s", title, context.records.run, exc, exc_info=True)
        return unavailable(f"{type(exc).__name__}: {exc}")


def render_html(records: RunRecords) -> str:
    """The report page of ``records``."""
    context = ReportContext(records)
    sections = [section(anchor, title, _section_body(context, title, body)) for anchor, title, body in SECTIONS]
    navigation = "".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title, _ in SECTIONS)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = f"ml_pipeline run {records.run}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>generated {esc(generated)}</p>"
        f"{_section_body(context, 'header', data_sections.header)}<nav>{navigation}</nav>"
        + "".join(sections)
        + "</body></html>\n"
    )


def build_report(config: PipelineConfig, *, run: str, out_path: Path | None = None) -> Path:
    """Write the report of ``run`` (from what its stages left under ``config.data_dir``) atomically to
    ``out_path`` (default ``<data_dir>/runs/<run>/report.html``) and return where it is. Every section whose input
    is absent says "not available: <why>"; no section's failure fails the report."""
    records = load_run_records(config, run)
    target = Path(out_path) if out_path is not None else records.layout.run_records(records.run) / REPORT_FILE
    atomic_write_text(target, render_html(records))
    return target


def summary_png(config: PipelineConfig, *, run: str) -> bytes:
    """A small PNG for an email's inline image: the decision, the candidate's score, the bar and the champion's."""
    records = load_run_records(config, run)
    judged = records.validate
    if records.stopped_early:
        reason = str((records.data_check or {}).get("reason", ""))
        return plots.summary("UNCHANGED", "#546e7a", _wrapped(reason, 42, 5), [])
    if judged is None:
        return plots.summary("NO DECISION", "#888888", _wrapped(records.why_absent("validate.json"), 42, 5), [])
    deploy = bool(judged.get("deploy"))
    colour = plots.GOOD if deploy else plots.BAD
    metric = str(judged.get("metric"))
    threshold = judged.get("threshold")
    bars = [(f"candidate {judged.get('candidate')}", _float(judged.get("candidate_score")), plots.NEUTRAL)]
    if judged.get("champion_score") is not None:
        bars.append((f"champion v{judged.get('champion_version')}", _float(judged["champion_score"]), plots.CHAMPION))
    details = [
        f"run {records.run}",
        f"task {judged.get('task') or records.task}",
        f"metric {metric}",
        f"threshold {threshold if threshold is not None else 'none'}",
    ]
    return plots.summary("DEPLOY" if deploy else "REJECT", colour, details, bars, threshold)


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _wrapped(text: str, width: int, lines: int) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    out.append(line)
    return out[:lines]
