"""The email of a degraded live check: the evidence (what drifted, by how much; the live vs validation score; the
window and the sample sizes) and whether retraining was requested. Built from the check's JSON record."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any

from mlpipeline.stages.notify import Email
from mlpipeline.tasks import METRICS


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    number = float(value)
    return f"{number:.2e}" if number != 0 and abs(number) < 1e-3 else f"{number:.{digits}f}"


def _rows(rows: list[tuple[str, str]], links: dict[str, str | None]) -> str:
    """A two-column table of facts (escaped here) and links."""
    cells = [f"<th align='left' style='padding-right:1em'>{escape(k)}</th><td>{escape(v)}</td>" for k, v in rows]
    cells += [
        f"<th align='left' style='padding-right:1em'>{escape(k)}</th><td><a href='{escape(url)}'>{escape(url)}</a></td>"
        for k, url in links.items()
        if url
    ]
    return "<table>" + "".join(f"<tr>{cell}</tr>" for cell in cells) + "</table>"


def _drift_table(top: list[dict[str, Any]]) -> str:
    if not top:
        return "<p>no feature compared</p>"
    head = "<tr><th align='left'>feature</th><th>kind</th><th>PSI</th><th>KS p-value</th><th>drifted</th></tr>"
    body = "".join(
        f"<tr><td>{escape(str(r['feature']))}</td><td>{escape(str(r['kind']))}</td><td>{_number(r['psi'])}</td>"
        f"<td>{_number(r['ks_pvalue'])}</td><td>{'yes' if r['drifted'] else 'no'}</td></tr>"
        for r in top
    )
    return f"<table cellpadding='3'>{head}{body}</table>"


def _score_line(record: dict[str, Any]) -> str:
    metric = record["metric"]
    lower = metric in METRICS and not METRICS[metric].higher_is_better
    named = f"{metric} (lower is better)" if lower else metric
    if record.get("live_score") is None:
        return f"{named}: no live score ({record['with_feedback']} rows with feedback)"
    return (
        f"{named}: live {_number(record['live_score'])} on {record['scored_rows']} rows with feedback vs validation "
        f"{_number(record['validation_score'])} (tolerance {record['score_tolerance']:g})"
    )


def _subject(record: dict[str, Any]) -> str:
    drift = record.get("drift") or {}
    summary = [f"{len(drift['drifted_features'])} feature(s) drifted"] if drift.get("drifted_features") else []
    if (drift.get("predictions") or {}).get("drifted"):
        summary.append("predictions drifted")
    if record.get("live_score") is not None and any(r.startswith("live ") for r in record["reasons"]):
        live, validation = _number(record["live_score"]), _number(record["validation_score"])
        summary.append(f"live {record['metric']} {live} vs {validation}")
    name, version = record["model_name"], record["model_version"]
    return f"[model_monitoring] {name} v{version} degraded: {', '.join(summary) or 'see the reasons'}"


def _facts(record: dict[str, Any], retrain: str) -> list[tuple[str, str]]:
    answers = (record.get("drift") or {}).get("predictions") or {}
    requests = record.get("requests") or {}
    window = f"{_when(record['window_start'])} to {_when(record['window_end'])} ({record['window_hours']:g} h)"
    latency = f"{_number(requests.get('latency_p50_ms'), 1)} / {_number(requests.get('latency_p95_ms'), 1)} ms"
    return [
        ("model", f"{record['model_name']} version {record['model_version']}"),
        ("window", window),
        ("predictions", f"{record['predictions']} logged ({record['sampled']} compared for drift)"),
        ("with feedback", str(record["with_feedback"])),
        ("score", _score_line(record)),
        ("predictions' drift", f"PSI {_number(answers.get('psi'))}, KS p-value {_number(answers.get('ks_pvalue'))}"),
        ("requests", f"{requests.get('requests', 0)}, error rate {_number(requests.get('error_rate'))}"),
        ("latency p50 / p95", latency),
        ("retraining", retrain),
        ("record", record["record_path"]),
    ]


def degraded_email(record: dict[str, Any], *, retrain: str, links: dict[str, str | None] | None = None) -> Email:
    """The alert for check ``record`` (a LiveCheck's JSON record); ``retrain`` says what happened to retraining;
    ``links`` (label: URL or None) are shown when known."""
    name, version = record["model_name"], record["model_version"]
    reasons = "".join(f"<li>{escape(r)}</li>" for r in record["reasons"])
    notes = "".join(f"<li>{escape(n)}</li>" for n in record.get("notes") or [])
    html = (
        f"<h2>{escape(name)} v{escape(str(version))} is degraded on live traffic</h2>"
        f"<h3>Why</h3><ul>{reasons}</ul>{_rows(_facts(record, retrain), links or {})}"
        f"<h3>Most moved features</h3>{_drift_table(record.get('top_drift') or [])}"
        f"<p>PSI bar {record['drift']['psi_threshold']:g}; KS p-value bar per feature "
        f"{_number(record.get('ks_pvalue_per_feature'))} (drift_ks_pvalue over the features tested)</p>"
        + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
    )
    return Email(subject=_subject(record), html=html)
