"""The report's sections about the decision and the models: each takes the :class:`ReportContext` and returns the
section's HTML body, saying "not available: <why>" when its input is absent or does not apply to the task."""

from __future__ import annotations

import math
from typing import Any

from mlpipeline.stages.report import plots
from mlpipeline.stages.report.context import ReportContext
from mlpipeline.stages.report.markup import bullets, esc, image, key_values, paragraph, table, unavailable
from mlpipeline.stages.report.predictions import importance
from mlpipeline.stages.report.records import VALIDATE_FILE
from mlpipeline.tasks import CLASSIFICATION, higher_is_better

_NOT_METRICS = ("confusion_matrix", "confusion_matrix_labels")
IMPORTANCE_TABLE_ROWS = 15


def _direction(metric: str) -> str:
    try:
        return "higher is better" if higher_is_better(metric) else "lower is better"
    except KeyError:
        return "direction unknown"


def decision(context: ReportContext) -> str:
    """The verdict, its reasons, and the numbers it was made from."""
    records = context.records
    if records.stopped_early:
        check = records.data_check or {}
        return '<p class="verdict unchanged">UNCHANGED: nothing trained</p>' + paragraph(str(check.get("reason")))
    judged = records.validate
    if judged is None:
        check = records.data_check
        said = [paragraph(f"data check: {check.get('reason')}")] if check else []
        return unavailable(records.why_absent(VALIDATE_FILE)) + "".join(said)
    deploy = bool(judged.get("deploy"))
    verdict = f'<p class="verdict {"deploy" if deploy else "reject"}">{"DEPLOY" if deploy else "REJECT"}</p>'
    metric = str(judged.get("metric"))
    facts = key_values(
        [
            ("task", judged.get("task") or context.task),
            ("metric", f"{metric} ({_direction(metric)})"),
            ("candidate", judged.get("candidate")),
            ("candidate score", judged.get("candidate_score")),
            ("threshold", judged.get("threshold")),
            ("champion version", judged.get("champion_version")),
            ("champion score on the same rows", judged.get("champion_score")),
            ("deployed version", (records.deploy or {}).get("version")),
        ]
    )
    return verdict + "<h3>Reasons</h3>" + bullets(judged.get("reasons") or []) + facts


def candidates(context: ReportContext) -> str:
    """Every candidate's held-out metrics side by side, and how it was trained."""
    found = context.records.candidates
    if not found:
        return unavailable(context.records.why_absent("models"))
    chosen = context.records.chosen
    names = [f"{c.name} (judged)" if chosen and c.name == chosen.name else c.name for c in found]
    metric_names: list[str] = []
    for candidate in found:
        metric_names += [m for m in candidate.metrics if m not in _NOT_METRICS and m not in metric_names]
    rows: list[list[Any]] = [["model type", *(c.train.get("model_type") for c in found)]]
    rows += [
        [m + (" ◀ judged by" if m == context.metric else ""), *(c.metrics.get(m) for c in found)] for m in metric_names
    ]
    rows += [[key, *(c.train.get(key) for c in found)] for key in ("n_train", "n_test", "seconds")]
    return paragraph(f"{len(found)} candidate(s), {context.task}; metrics on the held-out rows.") + table(
        ["", *names], rows
    )


def champion_vs_challenger(context: ReportContext) -> str:
    """validate.json's scores: every ranked candidate and the champion on the same held-out rows, and the bar."""
    judged = context.records.validate
    if judged is None:
        return unavailable(context.records.why_absent(VALIDATE_FILE))
    metric = str(judged.get("metric"))
    chosen = str(judged.get("candidate"))
    entries = [(chosen, _score(judged.get("candidate_score")), "chosen")]
    for ranked in judged.get("ranking") or []:
        if str(ranked.get("candidate")) != chosen:
            entries.append((str(ranked.get("candidate")), _score(ranked.get(metric)), "candidate"))
    version, champion_score = judged.get("champion_version"), judged.get("champion_score")
    if champion_score is not None:
        entries.append((f"champion v{version}", _score(champion_score), "champion"))
        note = f"champion v{version} was scored on the candidate's held-out rows"
    elif version is not None:
        note = f"champion v{version} could not be compared on these rows (see the reasons): the threshold decided"
    else:
        note = "no champion yet: the threshold alone decided"
    png = plots.score_bars(entries, metric=f"{metric} ({_direction(metric)})", threshold=judged.get("threshold"))
    return paragraph(note) + image(png, f"{metric}: candidates and champion on the same held-out rows")


def _score(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def confusion_matrices(context: ReportContext) -> str:
    """Each candidate's confusion matrix from its metrics.json (binary: 0/1 named by the positive label)."""
    if not context.records.candidates:
        return unavailable(context.records.why_absent("models"))
    if context.task not in CLASSIFICATION:
        return unavailable(f"a confusion matrix needs classes; this run is {context.task}")
    parts: list[str] = []
    for candidate in context.records.candidates:
        matrix = candidate.metrics.get("confusion_matrix")
        if not matrix:
            parts.append(unavailable(f"{candidate.name}: metrics.json holds no confusion matrix"))
            continue
        labels = candidate.metrics.get("confusion_matrix_labels") or _binary_labels(context, len(matrix))
        png = plots.confusion(matrix, labels, f"{candidate.name}: held-out rows")
        parts.append(f"<h3>{esc(candidate.name)}</h3>" + image(png, f"confusion matrix of {candidate.name}"))
    return "".join(parts)


def _binary_labels(context: ReportContext, size: int) -> list[str]:
    positive = context.positive_label
    if size != 2 or positive is None:
        return [str(i) for i in range(size)]
    return [f"0 (not {positive})", f"1 ({positive})"]


def _binary_curves(context: ReportContext) -> tuple[list[tuple[str, Any, Any]], str]:
    """(name, truth, P(1)) per candidate, and what is missing (for the note); raises nothing."""
    found, errors = context.answers()
    curves = [(a.candidate, a.truth, a.positive_probability) for a in found if a.probabilities is not None]
    missing = "; ".join(f"{name}: {why}" for name, why in errors.items())
    return curves, missing


def _binary_curves_or_why(context: ReportContext, drawn: str) -> tuple[list[tuple[str, Any, Any]], str] | str:
    """The binary candidates' curves and a note on those missing, or why ``drawn`` cannot be drawn here."""
    if not context.records.candidates:
        return unavailable(context.records.why_absent("models"))
    if context.task != "binary":
        return unavailable(f"{drawn} drawn for binary tasks; this run is {context.task}")
    curves, missing = _binary_curves(context)
    if not curves:
        return unavailable(f"no candidate's model could answer on its held-out rows ({missing})")
    return curves, unavailable(missing) if missing else ""


def roc_and_precision_recall(context: ReportContext) -> str:
    found = _binary_curves_or_why(context, "ROC and precision-recall curves are")
    if isinstance(found, str):
        return found
    curves, note = found
    positive = context.positive_label
    said = paragraph(f"positive class: {positive}; {len(curves[0][1])} held-out rows") if positive else ""
    return said + image(plots.roc_and_precision_recall(curves), "ROC and precision-recall curves") + note


def calibration(context: ReportContext) -> str:
    found = _binary_curves_or_why(context, "the calibration curve is")
    if isinstance(found, str):
        return found
    curves, note = found
    return image(plots.calibration(curves), "calibration curve") + note


def residuals(context: ReportContext) -> str:
    if not context.records.candidates:
        return unavailable(context.records.why_absent("models"))
    if context.task != "regression":
        return unavailable(f"residuals are drawn for regression; this run is {context.task}")
    found, errors = context.answers()
    missing = "; ".join(f"{name}: {why}" for name, why in errors.items())
    if not found:
        return unavailable(f"no candidate's model could answer on its held-out rows ({missing})")
    panels = [(a.candidate, a.truth, a.predicted) for a in found]
    note = unavailable(missing) if missing else ""
    return image(plots.regression(panels), "predicted vs actual and residuals") + note


def permutation_importance(context: ReportContext) -> str:
    """How much the judged candidate's score drops when one raw column is shuffled (held-out rows, seeded)."""
    chosen = context.records.chosen
    if chosen is None:
        return unavailable(context.records.why_absent("models"))
    try:
        model = context.model(chosen)
    except Exception as exc:
        return unavailable(f"cannot load {chosen.name}'s model: {type(exc).__name__}: {exc}")
    found = importance(context.records.config, chosen, model, context.metric)
    names = [name for name, _, _ in found.features]
    png = plots.hbars(
        names,
        [mean for _, mean, _ in found.features],
        errors=[std for _, _, std in found.features],
        title=f"{chosen.name}: permutation importance",
        xlabel=f"drop in {found.scorer} when the column is shuffled",
    )
    said = paragraph(
        f"{chosen.name}, scored by {found.scorer} on {found.rows} held-out rows, {found.repeats} shuffles per column"
    )
    rows = [[name, mean, std] for name, mean, std in found.features[:IMPORTANCE_TABLE_ROWS]]
    return said + image(png, "permutation importance") + table(["column", "mean drop", "std"], rows)
