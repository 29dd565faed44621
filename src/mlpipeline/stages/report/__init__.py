"""The per-run report: what a run decided and why, each candidate's metrics and curves, the data it learned from,
drift and timings, as one self-contained HTML page (``runs/<run>/report.html``), plus a PNG summary for emails.

Everything is read from what the run's stages left on disk (:class:`mlpipeline.storage.DataLayout`); the
candidates' models are loaded (verified) only for the curves and the permutation importance. A section whose input
is absent (a rejected run has no deploy.json, an unchanged run no models) says "not available: <why>".
"""

from __future__ import annotations

from mlpipeline.stages.report.records import RunRecords, load_run_records
from mlpipeline.stages.report.render import REPORT_FILE, build_report, render_html, summary_png

__all__ = ["REPORT_FILE", "RunRecords", "build_report", "load_run_records", "render_html", "summary_png"]
