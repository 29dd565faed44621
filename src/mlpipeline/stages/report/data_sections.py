"""The report's sections about the data and the run: the ETL's profile and quarantine, drift, the deployment and the
stages' timings. Each takes the :class:`ReportContext` and returns the section's HTML body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mlpipeline.stages.etl.result import PROFILE_FILE
from mlpipeline.stages.etl.result import RECORD_FILE as ETL_FILE
from mlpipeline.stages.monitor.report import REPORT_FILE as MONITOR_FILE
from mlpipeline.stages.report import plots
from mlpipeline.stages.report.context import ReportContext
from mlpipeline.stages.report.markup import bullets, image, key_values, number, paragraph, table, unavailable
from mlpipeline.stages.report.records import DEPLOY_FILE

PROFILE_TABLE_ROWS = 100
TOP_REASONS = 15
KS_FLOOR = 1e-16  # smaller p-values are all "no doubt": drawn at the floor so the scale stays readable
_NUMBER_STATS = ("mean", "std", "min", "50%", "max")


def data_profile(context: ReportContext) -> str:
    """What the ETL kept: row counts, the target's classes (or range), excluded columns, each column's summary."""
    records = context.records
    etl, profile = records.etl, records.profile
    if etl is None and profile is None:
        return unavailable(records.why_absent(ETL_FILE))
    etl, profile = etl or {}, profile or {}
    counts = key_values(
        [
            ("task", etl.get("task") or profile.get("task")),
            ("rows in", etl.get("rows_in", profile.get("rows_in"))),
            ("rows out", etl.get("rows_out", profile.get("rows"))),
            ("rows quarantined", etl.get("rows_quarantined", profile.get("rows_quarantined"))),
            ("duplicates dropped", etl.get("duplicates_dropped", profile.get("duplicates_dropped"))),
        ]
        + ([("positive label (the class 1)", etl["positive_label"])] if etl.get("positive_label") else [])
    )
    parts = [counts, _target(profile.get("target") or {})]
    excluded = etl.get("excluded") or {}
    if excluded:
        parts.append("<h3>Columns not used</h3>" + table(["column", "why"], sorted(excluded.items())))
    columns = profile.get("columns")
    parts.append("<h3>Columns</h3>" + (_columns(columns) if columns else unavailable(records.why_absent(PROFILE_FILE))))
    return "".join(parts)


def _target(target: dict[str, Any]) -> str:
    classes = target.get("classes")
    if classes:
        labels, counts = list(classes), [float(v) for v in classes.values()]
        png = plots.hbars(labels, counts, title=f"target {target.get('column', '')}: rows per class", xlabel="rows")
        return "<h3>Target</h3>" + image(png, "rows per class")
    summary = [(key, target[key]) for key in ("column", "min", "mean", "max") if key in target]
    return "<h3>Target</h3>" + key_values(summary) if summary else ""


def _columns(columns: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, stats in list(columns.items())[:PROFILE_TABLE_ROWS]:
        if "frequencies" in stats:
            top = list(stats["frequencies"].items())[:3]
            summary = ", ".join(f"{value}: {share:.1%}" for value, share in top)
        elif "mean" in stats:
            summary = ", ".join(f"{key} {number(stats.get(key))}" for key in _NUMBER_STATS if key in stats)
        else:
            summary = ", ".join(f"{key} {stats[key]}" for key in ("min", "max") if key in stats)
        rows.append([name, stats.get("kind"), stats.get("dtype"), stats.get("missing"), summary])
    more = (
        paragraph(f"first {PROFILE_TABLE_ROWS} of {len(columns)} columns") if len(columns) > PROFILE_TABLE_ROWS else ""
    )
    return table(["column", "kind", "dtype", "missing", "summary"], rows) + more


def quarantine(context: ReportContext) -> str:
    """How many rows were set aside and why (the profile counts every bad row's reason; quarantine.csv holds
    the first ``max_quarantine_rows`` of them)."""
    records = context.records
    etl, profile = records.etl or {}, records.profile or {}
    if not etl and not profile:
        return unavailable(records.why_absent(ETL_FILE))
    bad = etl.get("rows_quarantined", profile.get("rows_quarantined"))
    counts = key_values(
        [
            ("rows quarantined", bad),
            ("share of the rows read", etl.get("bad_row_fraction")),
            ("quarantine file", records.quarantine_path),
            ("bad rows not written to the file", profile.get("quarantine_rows_not_written")),
        ]
    )
    reasons = profile.get("quarantine_reasons") or _reasons_from_file(records.quarantine_path)
    if not bad and not reasons:
        return counts + paragraph("no row was quarantined")
    top = sorted(reasons.items(), key=lambda item: -item[1])[:TOP_REASONS]
    png = plots.hbars([r for r, _ in top], [float(c) for _, c in top], title="top quarantine reasons", xlabel="rows")
    return counts + image(png, "top quarantine reasons") + table(["reason", "rows"], top)


def _reasons_from_file(path: Path | None) -> dict[str, int]:
    if path is None:
        return {}
    try:
        reasons = pd.read_csv(path, usecols=["_reason"], dtype=str)["_reason"]
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in reasons.value_counts().items()}


def drift(context: ReportContext) -> str:
    """monitor.json's drift: PSI per feature (bars, drifted in red) and KS p-values, against the named reference."""
    records = context.records
    if records.monitor is None:
        return unavailable(records.why_absent(MONITOR_FILE))
    measured = records.monitor.get("drift") or {}
    features: dict[str, dict[str, Any]] = measured.get("features") or {}
    reference = measured.get("reference_path") or ""
    named = f"{reference} (run {Path(reference).parent.name})" if reference else "not recorded"
    said = key_values(
        [
            ("reference (the previous champion's training data)", named),
            ("current", measured.get("current_path")),
            ("PSI threshold", measured.get("psi_threshold")),
            ("KS p-value threshold", measured.get("ks_pvalue_threshold")),
            ("drifted features", ", ".join(measured.get("drifted_features") or []) or "none"),
        ]
    )
    if not features:
        return said + unavailable("monitor.json holds no per-feature drift (drift could not be computed)")
    return said + _drift_charts(measured, features) + _drift_table(measured, features) + _alerts(records.monitor)


def _drift_charts(measured: dict[str, Any], features: dict[str, dict[str, Any]]) -> str:
    with_psi = sorted(((n, f) for n, f in features.items() if f.get("psi") is not None), key=lambda x: -x[1]["psi"])
    parts = []
    if with_psi:
        png = plots.hbars(
            [n for n, _ in with_psi],
            [f["psi"] for _, f in with_psi],
            flagged=[bool(f.get("drifted")) for _, f in with_psi],
            threshold=measured.get("psi_threshold"),
            title="PSI per feature (red: drifted)",
            xlabel="population stability index",
        )
        parts.append(image(png, "PSI per feature"))
    with_ks = sorted(
        ((n, f) for n, f in features.items() if f.get("ks_pvalue") is not None), key=lambda x: x[1]["ks_pvalue"]
    )
    if with_ks:
        png = plots.hbars(
            [n for n, _ in with_ks],
            [max(float(f["ks_pvalue"]), KS_FLOOR) for _, f in with_ks],
            flagged=[float(f["ks_pvalue"]) < float(measured.get("ks_pvalue_threshold") or 0) for _, f in with_ks],
            threshold=measured.get("ks_pvalue_threshold"),
            log_scale=True,
            kept="smallest",
            title="KS p-value per numeric feature (red: below the threshold)",
            xlabel=f"two-sample KS p-value (log scale; below {KS_FLOOR:g} drawn at {KS_FLOOR:g})",
        )
        parts.append(image(png, "KS p-value per feature"))
    return "".join(parts)


def _drift_table(measured: dict[str, Any], features: dict[str, dict[str, Any]]) -> str:
    rows = [
        [name, f.get("kind"), f.get("psi"), f.get("ks_pvalue"), f.get("drifted"), f.get("note") or ""]
        for name, f in features.items()
    ]
    for what in ("target", "predictions"):
        entry = measured.get(what)
        if entry:
            name = f"{what} ({entry['column']})" if entry.get("column") else what
            rows.append([name, entry.get("kind"), entry.get("psi"), entry.get("ks_pvalue"), entry.get("drifted"), ""])
    return table(["feature", "kind", "PSI", "KS p-value", "drifted", "note"], rows)


def _alerts(monitor: dict[str, Any]) -> str:
    alerts = monitor.get("alerts") or []
    return "<h3>Monitoring alerts</h3>" + bullets(alerts) if alerts else paragraph("no monitoring alert")


def deployment(context: ReportContext) -> str:
    """deploy.json and the live checks' summary from monitor.json."""
    records = context.records
    if records.deploy is None:
        return unavailable(records.why_absent(DEPLOY_FILE))
    deployed = records.deploy
    parts = [
        key_values(
            [
                ("model", deployed.get("model_name")),
                ("version", deployed.get("version")),
                ("previous version", deployed.get("previous_version")),
                ("alias", deployed.get("alias")),
                ("deployed at", deployed.get("deployed_at")),
                ("smoke test rows", deployed.get("smoke_test_rows")),
                ("largest endpoint-vs-offline difference", deployed.get("max_probability_difference")),
            ]
        )
    ]
    monitor = records.monitor
    if monitor is None:
        parts.append(unavailable(f"live checks: {records.why_absent(MONITOR_FILE)}"))
    else:
        live = monitor.get("live") or {}
        keys = ("requests", "failures", "latency_p50_ms", "latency_p95_ms", "live_accuracy", "live_mae", "live_rmse")
        pairs = [("healthy", monitor.get("healthy")), ("served version", monitor.get("served_version"))]
        parts.append("<h3>Live checks</h3>" + key_values(pairs + [(k, live[k]) for k in keys if k in live]))
    return "".join(parts)


def timings(context: ReportContext) -> str:
    """The seconds each stage recorded (the ETL, each candidate's training, the live probes)."""
    records = context.records
    spent: list[tuple[str, float]] = []
    if records.etl and isinstance(records.etl.get("seconds"), (int, float)):
        spent.append(("etl", float(records.etl["seconds"])))
    for candidate in records.candidates:
        if isinstance(candidate.train.get("seconds"), (int, float)):
            spent.append((f"train {candidate.name}", float(candidate.train["seconds"])))
    live = (records.monitor or {}).get("live") or {}
    if isinstance(live.get("seconds"), (int, float)):
        spent.append(("monitor live checks", float(live["seconds"])))
    if not spent:
        why = records.why_absent(ETL_FILE) if records.stopped_early else "no stage recorded its duration"
        return unavailable(f"{why} (seconds are in etl.json, train.json, monitor.json)")
    png = plots.hbars([n for n, _ in spent], [s for _, s in spent], title="seconds per stage", xlabel="seconds")
    total = sum(seconds for _, seconds in spent)
    note = paragraph("crawl, check_data, validate and deploy record no duration.")
    return image(png, "seconds per stage") + table(["stage", "seconds"], [*spent, ("total recorded", total)]) + note


def header(context: ReportContext) -> str:
    """Which run, which data, which model: the facts above every section."""
    config = context.records.config
    return key_values(
        [
            ("run", context.records.run),
            ("task", context.task),
            ("target", config.dataset_schema.target),
            ("source", _without_secrets(config.crawl_url)),
            ("registered model", config.registered_model_name),
        ]
    )


def _without_secrets(url: str) -> str:
    """The source without credentials or query (either may hold a token)."""
    head, _, _ = url.partition("?")
    scheme, found, rest = head.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if found else head
