"""What the pipeline tells people: subjects and HTML bodies built from the stages' result records.

Sending is the DAG's job (Airflow's SMTP provider, connection ``smtp_default``); composing is here so it can be
tested, and read, without Airflow: the bodies, the links to the run's pages (:func:`with_links`) and the MIME message
with attachments and inline images (:func:`mime_message`). Scores are shown with their direction where lower is
better (rmse, mae, log_loss: ``mlpipeline.tasks``); records of any task render (and older runs' records, which lack
the task).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from html import escape
from typing import Any

from mlpipeline import links
from mlpipeline.config import PipelineConfig
from mlpipeline.tasks import METRICS


@dataclass(frozen=True)
class Attachment:
    """A file attached to an email (``mime_type`` as ``maintype/subtype``)."""

    filename: str
    content: bytes
    mime_type: str


@dataclass(frozen=True)
class InlineImage:
    """An image shown in the body by ``<img src="cid:{content_id}">``."""

    content_id: str
    content: bytes
    subtype: str = "png"


@dataclass(frozen=True)
class Email:
    subject: str
    html: str
    attachments: tuple[Attachment, ...] = ()
    inline_images: tuple[InlineImage, ...] = ()


def mime_message(email: Email, *, sender: str, recipients: list[str]) -> EmailMessage:
    """The message as sent: the HTML body, with its inline images beside it (multipart/related, each by its
    Content-ID), then the attachments (multipart/mixed)."""
    message = EmailMessage()
    message["Subject"] = email.subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="mlpipeline")
    message.set_content(email.html, subtype="html")
    for image in email.inline_images:
        message.add_related(image.content, "image", image.subtype, cid=f"<{image.content_id}>", disposition="inline")
    for attachment in email.attachments:
        maintype, subtype = attachment.mime_type.split("/", 1)
        message.add_attachment(attachment.content, maintype, subtype, filename=attachment.filename)
    return message


def inline_image_id(name: str) -> str:
    """A Content-ID for an inline image, unique to this message (``name@mlpipeline.<random>``)."""
    return make_msgid(idstring=name, domain="mlpipeline").strip("<>")


@dataclass(frozen=True)
class RunLinks:
    """Where a reader goes from an email: the Airflow run (or the failed task) and the MLflow run; None when the
    UI's address is not configured."""

    airflow_run: str | None = None
    airflow_task: str | None = None
    mlflow_run: str | None = None


def run_links(
    config: PipelineConfig,
    *,
    dag_id: str,
    airflow_run_id: str | None,
    mlflow_run_id: str | None = None,
    task_id: str | None = None,
    map_index: int = -1,
) -> RunLinks:
    """The links of one run (``airflow_run_id`` is Airflow's run id, not the sanitized run key), and of one of its
    task instances when ``task_id`` is given."""
    task = links.airflow_task_url(config, dag_id, airflow_run_id, task_id, map_index) if task_id else None
    return RunLinks(
        airflow_run=links.airflow_run_url(config, dag_id, airflow_run_id),
        airflow_task=task,
        mlflow_run=links.mlflow_run_url(config, mlflow_run_id),
    )


def with_links(email: Email, run: RunLinks) -> Email:
    """``email`` with a line of links under its heading (none: unchanged)."""
    named = [("Airflow run", run.airflow_run), ("Airflow task", run.airflow_task), ("MLflow run", run.mlflow_run)]
    anchors = [f'<a href="{escape(url, quote=True)}">{escape(label)}</a>' for label, url in named if url]
    if not anchors:
        return email
    line = f"<p>{' | '.join(anchors)}</p>"
    head, found, rest = email.html.partition("</h2>")
    html = f"{head}{found}\n{line}{rest}" if found else f"{line}\n{email.html}"
    return replace(email, html=html)


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th align='left' style='padding-right:1em'>{escape(str(k))}</th><td>{escape(_fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>" if items else "<p>none</p>"


def _lower_is_better(metric: str) -> bool:
    known = METRICS.get(metric)
    return known is not None and not known.higher_is_better


def _named(metric: str) -> str:
    """The metric's name, with its direction where lower is better."""
    return f"{metric} (lower is better)" if _lower_is_better(metric) else metric


def _bar(metric: str, score: float, threshold: float | None, *, word: str = "") -> str:
    """The score against the bar, e.g. "accuracy 0.8512 >= 0.7500", "rmse 3.2000 (lower is better) <= 4.0000",
    "rmse 3.2000 (lower is better), no threshold"; ``word`` goes before the threshold's value."""
    lower = _lower_is_better(metric)
    shown = f"{metric} {float(score):.4f}{' (lower is better)' if lower else ''}"
    if threshold is None:
        return f"{shown}, no threshold"
    passes = score <= threshold if lower else score >= threshold
    relation = ("<=" if passes else ">") if lower else (">=" if passes else "<")
    return f"{shown} {relation} {word}{float(threshold):.4f}"


def _metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(_named(name), value) for name, value in sorted(metrics.items()) if isinstance(value, (int, float))]


def _task_rows(training: dict[str, Any]) -> list[tuple[str, Any]]:
    """The task and a classifier's classes (records of older runs have neither: no rows)."""
    rows: list[tuple[str, Any]] = [("task", training["task"])] if training.get("task") else []
    classes = list(training.get("classes") or [])
    if classes:
        shown = ", ".join(str(c) for c in classes[:20])
        rows.append(("classes", shown if len(classes) <= 20 else f"{shown}, ... ({len(classes)} in all)"))
    return rows


def success_email(
    *,
    dag_run: str,
    validation: dict[str, Any],
    training: dict[str, Any],
    deployment: dict[str, Any],
    monitoring: dict[str, Any],
    etl: dict[str, Any] | None = None,
) -> Email:
    metric, score, threshold = validation["metric"], validation["candidate_score"], validation.get("threshold")
    subject = (
        f"[ml_pipeline] deployed {deployment['model_name']} v{deployment['version']}: {_bar(metric, score, threshold)}"
    )
    parts = [
        f"<h2>New champion: {escape(deployment['model_name'])} v{escape(str(deployment['version']))}</h2>",
        _table(
            [
                *_deployment_rows(dag_run, training, deployment),
                *_task_rows(training),
                ("score", _bar(metric, score, threshold, word="threshold ")),
            ]
        ),
        "<h3>Held-out metrics</h3>",
        _table(_metrics_rows(training.get("metrics", {}))),
        "<h3>Decision</h3>",
        _list(list(validation.get("reasons", []))),
        "<h3>Monitoring</h3>",
        _table(_monitoring_rows(monitoring)),
        "<h3>Alerts</h3>",
        _list(list(monitoring.get("alerts", []))),
    ]
    if etl:
        parts += ["<h3>Data</h3>", _table(_etl_rows(etl))]
    return Email(subject=subject, html="\n".join(parts))


def _deployment_rows(dag_run: str, training: dict[str, Any], deployment: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("run", dag_run),
        ("model type", training.get("model_type")),
        ("previous champion", deployment.get("previous_version")),
        ("serving", deployment.get("serving_url")),
        ("deployed at", deployment.get("deployed_at")),
        ("data fingerprint (sha256)", training.get("data_sha256")),
    ]


def _monitoring_rows(monitoring: dict[str, Any]) -> list[tuple[str, Any]]:
    drifted = monitoring.get("drifted_features") or []
    return [
        ("endpoint healthy", monitoring.get("healthy")),
        # live_accuracy, or whichever live scores the monitor reports for the task
        *[
            (f"live {_named(key.removeprefix('live_'))}", value)
            for key, value in monitoring.items()
            if key.startswith("live_")
        ],
        ("latency p50 (ms)", monitoring.get("latency_p50_ms")),
        ("latency p95 (ms)", monitoring.get("latency_p95_ms")),
        ("max PSI", monitoring.get("max_psi")),
        ("drifted features", ", ".join(drifted) if drifted else "none"),
        *[
            (key.replace("_", " "), "not compared" if monitoring[key] is None else monitoring[key])
            for key in ("target_drifted", "predictions_drifted")
            if key in monitoring
        ],
    ]


def _etl_rows(etl: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("rows fetched", etl.get("rows_in")),
        ("rows used", etl.get("rows_out")),
        ("rows quarantined", etl.get("rows_quarantined")),
        ("duplicates dropped", etl.get("duplicates_dropped")),
    ]


def retrain_alert_email(*, dag_run: str, validation: dict[str, Any], training: dict[str, Any]) -> Email:
    metric, threshold = validation["metric"], validation.get("threshold")
    lower = ", lower is better" if _lower_is_better(metric) else ""
    bar = "no threshold" if threshold is None else f"threshold {float(threshold):.4f}"
    score = float(validation["candidate_score"])
    subject = f"[ml_pipeline] retrain needed: candidate not deployed ({metric} {score:.4f}{lower}, {bar})"
    champion = validation.get("champion_version")
    html = "\n".join(
        [
            "<h2>The candidate model was not deployed</h2>",
            _table(
                [
                    ("run", dag_run),
                    *_task_rows(training),
                    ("metric", _named(metric)),
                    ("candidate", validation["candidate_score"]),
                    ("threshold", "none" if threshold is None else threshold),
                    ("champion", f"v{champion} ({_fmt(validation.get('champion_score'))})" if champion else None),
                    ("still serving", f"v{champion}" if champion else "nothing (no champion yet)"),
                ]
            ),
            "<h3>Why</h3>",
            _list(list(validation.get("reasons", []))),
            "<h3>Candidate metrics</h3>",
            _table(_metrics_rows(training.get("metrics", {}))),
            "<p>Look at the data profile and quarantine of this run, then retrain with better data, features or "
            "hyperparameters (Airflow Variables), or adjust the threshold.</p>",
        ]
    )
    return Email(subject=subject, html=html)


def drift_alert_email(*, dag_run: str, monitoring: dict[str, Any]) -> Email:
    alerts = list(monitoring.get("alerts", []))
    subject = f"[ml_pipeline] monitoring alert: {len(alerts)} issue(s) in run {dag_run}"
    html = "\n".join(
        [
            "<h2>Monitoring raised alerts</h2>",
            _list(alerts),
            _table([("max PSI", monitoring.get("max_psi")), ("report", monitoring.get("report_path"))]),
        ]
    )
    return Email(subject=subject, html=html)


def failure_email(
    *, dag_id: str, task_id: str, dag_run: str, try_number: int | None, error: str, log_url: str | None
) -> Email:
    subject = f"[ml_pipeline] FAILED: {dag_id}.{task_id} in run {dag_run}"
    html = "\n".join(
        [
            f"<h2>Task {escape(task_id)} failed</h2>",
            _table([("dag", dag_id), ("run", dag_run), ("try", try_number), ("log", log_url)]),
            "<h3>Error</h3>",
            f"<pre>{escape(error[:5000])}</pre>",
        ]
    )
    return Email(subject=subject, html=html)
