"""The report's charts as PNG bytes: matplotlib figures drawn by the Agg canvas directly (no pyplot, so no global
backend or figure state is touched and threads may draw at once). Inputs are plain numbers and texts."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

DPI = 90
MAX_BARS = 25  # a chart of more bars is unreadable: the largest ones are shown, the title says how many in all
MAX_SCATTER = 5_000
MAX_ANNOTATED_CLASSES = 20
GOOD, BAD, NEUTRAL, CHAMPION = "#2e7d32", "#c62828", "#1f77b4", "#7f7f7f"


def label(text: Any, limit: int = 40) -> str:
    """Data text made safe for a chart: "$" would start matplotlib's math mode (and can fail to parse)."""
    value = str(text)
    value = value if len(value) <= limit else value[: limit - 1] + "…"
    return value.replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def hbars(
    labels: Sequence[Any],
    values: Sequence[float],
    *,
    title: str,
    xlabel: str,
    threshold: float | None = None,
    flagged: Sequence[bool] | None = None,
    errors: Sequence[float] | None = None,
    log_scale: bool = False,
    kept: str = "largest",
) -> bytes:
    """Horizontal bars, first label on top; ``flagged`` bars red; a dashed line at ``threshold``. Only the first
    ``MAX_BARS`` are drawn: ``kept`` says which those are in the title (the caller sorted them)."""
    shown = min(len(values), MAX_BARS)
    names = [label(name) for name in labels[:shown]]
    numbers = [float(v) for v in values[:shown]]
    colours = [BAD if flag else NEUTRAL for flag in (flagged or [False] * shown)[:shown]]
    figure = new_figure(7.0, 1.0 + 0.28 * max(shown, 2))
    axes = figure.add_subplot()
    positions = np.arange(shown)
    xerr = None if errors is None else [float(e) for e in errors[:shown]]
    axes.barh(positions, numbers, color=colours, xerr=xerr)
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()
    if log_scale:
        axes.set_xscale("log")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        axes.legend(fontsize=8, loc="lower right")
    more = f" ({kept} {shown} of {len(values)})" if len(values) > shown else ""
    axes.set_title(label(title + more, 90), fontsize=10)
    axes.set_xlabel(label(xlabel, 90), fontsize=9)
    return to_png(figure)


def score_bars(entries: Sequence[tuple[str, float, str]], *, metric: str, threshold: float | None) -> bytes:
    """Scores on the same held-out rows: ``entries`` (name, score, kind: chosen / candidate / champion)."""
    colours = {"chosen": NEUTRAL, "candidate": "#9ecae1", "champion": CHAMPION}
    figure = new_figure(6.5, 1.2 + 0.4 * max(len(entries), 2))
    axes = figure.add_subplot()
    positions = np.arange(len(entries))
    scores = [score if math.isfinite(score) else 0.0 for _, score, _ in entries]
    axes.barh(positions, scores, color=[colours.get(kind, NEUTRAL) for _, _, kind in entries])
    axes.set_yticks(positions, [label(f"{name} ({kind})") for name, _, kind in entries], fontsize=8)
    axes.invert_yaxis()
    for position, (_, score, _) in zip(positions, entries, strict=True):
        axes.text(scores[position], position, f" {score:.4f}", va="center", fontsize=8)
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        axes.legend(fontsize=8, loc="lower right")
    axes.set_xlabel(label(metric), fontsize=9)
    axes.set_title("scores on the same held-out rows", fontsize=10)
    axes.margins(x=0.2)
    return to_png(figure)


def confusion(matrix: Sequence[Sequence[int]], labels: Sequence[Any], title: str) -> bytes:
    """Counts (true rows, predicted columns), coloured by each true class's share."""
    counts = np.asarray(matrix, dtype=float)
    n = len(counts)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(3.5 + 0.35 * n, 12.0)
    figure = new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class", shrink=0.8)
    names = [label(name, 20) for name in labels]
    if n <= MAX_ANNOTATED_CLASSES:
        axes.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(range(n), names, fontsize=8)
        for row in range(n):
            for column in range(n):
                colour = "white" if shares[row, column] > 0.5 else "black"
                axes.text(column, row, f"{int(counts[row, column])}", ha="center", va="center", color=colour)
    axes.set_xlabel("predicted", fontsize=9)
    axes.set_ylabel("true", fontsize=9)
    axes.set_title(label(title, 60), fontsize=10)
    return to_png(figure)


def roc_and_precision_recall(curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """ROC and precision-recall of each (name, truth 0/1, P(1)) on the same rows."""
    figure = new_figure(10.0, 4.2)
    roc_axes, pr_axes = figure.subplots(1, 2)
    for name, truth, probability in curves:
        fpr, tpr, _ = roc_curve(truth, probability)
        roc_axes.plot(fpr, tpr, label=f"{label(name)} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, probability)
        ap = average_precision_score(truth, probability)
        pr_axes.plot(recall, precision, drawstyle="steps-post", label=f"{label(name)} (AP {ap:.3f})")
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    base_rate = float(np.mean(curves[0][1])) if curves else 0.0
    pr_axes.axhline(base_rate, color="grey", linestyle=":", linewidth=1, label=f"base rate {base_rate:.3f}")
    for axes, title, xlabel, ylabel in (
        (roc_axes, "ROC", "false positive rate", "true positive rate"),
        (pr_axes, "precision-recall", "recall", "precision"),
    ):
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        axes.legend(fontsize=8, loc="lower right" if axes is roc_axes else "lower left")
    return to_png(figure)


def calibration(curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """Reliability diagram: mean predicted P(1) against the observed share of 1, per probability bin."""
    figure = new_figure(5.5, 4.5)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    for name, truth, probability in curves:
        bins = max(2, min(10, len(truth) // 10))
        observed, predicted = calibration_curve(truth, probability, n_bins=bins, strategy="quantile")
        axes.plot(predicted, observed, marker="o", markersize=3, label=label(name))
    axes.set(title="calibration", xlabel="mean predicted P(positive)", ylabel="observed share positive")
    axes.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    axes.legend(fontsize=8, loc="upper left")
    return to_png(figure)


def regression(panels: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """Per (name, truth, predicted): predicted against actual, and residuals against predicted."""
    figure = new_figure(10.0, 3.8 * len(panels))
    grid = np.atleast_2d(figure.subplots(len(panels), 2, squeeze=False))
    for row, (name, truth, predicted) in enumerate(panels):
        truth, predicted = (
            np.asarray(truth, dtype=float)[:MAX_SCATTER],
            np.asarray(predicted, dtype=float)[:MAX_SCATTER],
        )
        versus, residual = grid[row]
        versus.scatter(truth, predicted, s=8, alpha=0.6)
        low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
        versus.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1)
        versus.set(title=f"{label(name)}: predicted vs actual", xlabel="actual", ylabel="predicted")
        residual.scatter(predicted, truth - predicted, s=8, alpha=0.6)
        residual.axhline(0, color="grey", linestyle=":", linewidth=1)
        residual.set(title=f"{label(name)}: residuals", xlabel="predicted", ylabel="actual - predicted")
    return to_png(figure)


def summary(
    headline: str,
    colour: str,
    details: Sequence[str],
    bars: Sequence[tuple[str, float, str]],
    threshold: float | None = None,
) -> bytes:
    """A small card for an email: the decision on the left; the scores (name, score, colour) and the bar right."""
    figure = new_figure(6.0, 2.2)
    text_axes, bar_axes = figure.subplots(1, 2, width_ratios=[1, 1.3])
    text_axes.axis("off")
    text_axes.text(0, 0.85, label(headline, 30), fontsize=15, fontweight="bold", color=colour, va="top")
    text_axes.text(0, 0.5, "\n".join(label(line, 42) for line in details), fontsize=8, va="top")
    if not bars:
        bar_axes.axis("off")
        return to_png(figure)
    names = [label(name, 32) for name, _, _ in bars]
    values = [value if math.isfinite(value) else 0.0 for _, value, _ in bars]
    bar_axes.barh(range(len(bars)), values, color=[colour for _, _, colour in bars])
    bar_axes.set_yticks(range(len(bars)), names, fontsize=8)
    bar_axes.invert_yaxis()
    for position, value in enumerate(values):
        bar_axes.text(value, position, f" {value:.3f}", va="center", fontsize=8)
    if threshold is not None:
        bar_axes.axvline(threshold, color="black", linestyle="--", linewidth=1)
        bar_axes.text(threshold, len(bars) - 0.4, f" bar {threshold:g}", fontsize=7)
    bar_axes.margins(x=0.25)
    bar_axes.tick_params(axis="x", labelsize=7)
    return to_png(figure)
