"""Probes of the live model endpoint: health and served version, single-row and batch predictions on held-out
rows (answers checked, live accuracy; for a regressor live MAE and RMSE), and latency against the budget.

Answers are checked as the task says (the serving contract): binary, labels and P(positive) in [0, 1]; multiclass,
labels among ``classes`` and per row a probability for each class, summing to 1; regression, finite numbers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from mlpipeline.config import PipelineConfig
from mlpipeline.payload import json_rows
from mlpipeline.tasks import TASKS

_MAX_ERRORS_KEPT = 10
# Batch and single-row answers must agree to this (different BLAS paths may differ in the last bits); a regressor's
# numbers relative to their size above 1.
_BATCH_TOLERANCE = 1e-6
# A multiclass answer's probabilities of one row sum to 1 within this.
_SUM_TOLERANCE = 1e-6


@dataclass
class LiveChecks:
    """What the probes found. ``problems`` are ill health (the stage fails); ``alerts`` are only reported."""

    latency_budget_ms: float
    task: str | None = None  # binary / multiclass / regression; None: as each answer's shape says
    health: dict[str, Any] | None = None
    served_version: str | None = None
    requests: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures, described
    latencies_ms: list[float] = field(default_factory=list)  # of the single-row requests
    correct: int = 0
    scored: int = 0
    absolute_errors: list[float] = field(default_factory=list)  # regression: |prediction - truth| per scored row
    batch: dict[str, Any] = field(default_factory=dict)  # latency_ms, rows, disagreements, ok: as far as it got
    problems: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth saying, not worth an alert (e.g. a newer champion)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        self.failures += 1
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)

    def latency_percentile_ms(self, percent: float) -> float | None:
        return float(np.percentile(self.latencies_ms, percent)) if self.latencies_ms else None

    @property
    def live_accuracy(self) -> float | None:
        if self.task == "regression":
            return None
        return self.correct / self.scored if self.scored else None

    @property
    def live_mae(self) -> float | None:
        return float(np.mean(self.absolute_errors)) if self.absolute_errors else None

    @property
    def live_rmse(self) -> float | None:
        return float(np.sqrt(np.mean(np.square(self.absolute_errors)))) if self.absolute_errors else None

    def to_dict(self) -> dict[str, Any]:
        record = {
            "requests": self.requests,
            "failures": self.failures,
            "errors": self.errors,
            "latency_p50_ms": self.latency_percentile_ms(50),
            "latency_p95_ms": self.latency_percentile_ms(95),
            "latency_max_ms": max(self.latencies_ms) if self.latencies_ms else None,
            "latency_budget_ms": self.latency_budget_ms,
            "live_accuracy": self.live_accuracy,
            "scored_rows": self.scored,
            "batch": self.batch,
            "seconds": round(self.seconds, 3),
        }
        if self.task == "regression":  # classification records keep their keys
            record.update(live_mae=self.live_mae, live_rmse=self.live_rmse)
        return record


def probe_endpoint(
    config: PipelineConfig, holdout: pd.DataFrame | None, expected_version: str | None, live: LiveChecks
) -> None:
    """Probe ``config.serving_url``, recording into ``live``; held-out rows are sent only to a healthy endpoint.

    Without ``holdout`` only the health is checked (the caller records that as a monitoring failure).
    """
    started = time.perf_counter()
    live.task = config.task if config.task in TASKS else None
    url = config.serving_url
    timeout = httpx.Timeout(config.serving_timeout_seconds, connect=min(10.0, config.serving_timeout_seconds))
    with httpx.Client(base_url=url, timeout=timeout) as http:
        if _check_health(http, url, expected_version, live) and holdout is not None and not holdout.empty:
            rows, truth = _sample(config, holdout)
            singles = _single_row_checks(http, rows, truth, live)
            _batch_check(http, rows, singles, live)
    _judge(live)
    live.seconds = time.perf_counter() - started


def _check_health(http: httpx.Client, url: str, expected_version: str | None, live: LiveChecks) -> bool:
    """GET /health; True when it answered 200 (predictions are worth trying)."""
    try:
        response = http.get("/health")
    except httpx.HTTPError as exc:
        live.problems.append(
            f"model endpoint {url} is unreachable ({type(exc).__name__}: {exc}); start the model server "
            "(python -m mlpipeline.serving) or fix serving_url"
        )
        return False
    try:
        body = response.json()
    except ValueError:
        body = None
    live.health = body if isinstance(body, dict) else {"raw": response.text[:500]}
    if response.status_code != 200:
        live.problems.append(
            f"model endpoint {url}/health answered HTTP {response.status_code} "
            f"({str(live.health)[:300]}); is a champion registered and loadable?"
        )
        return False
    live.served_version = None if live.health.get("model_version") is None else str(live.health["model_version"])
    if live.health.get("status") == "degraded":
        live.alerts.append(f"endpoint is degraded: {live.health.get('last_error')}")
    if expected_version is not None and live.served_version != expected_version:
        live.problems.append(
            f"endpoint serves version {live.served_version} but version {expected_version} was deployed; "
            f"POST {url}/reload and check the server log"
        )
    return True


def _sample(config: PipelineConfig, holdout: pd.DataFrame) -> tuple[list[dict[str, Any]], list[Any]]:
    """A seeded sample of ``monitor_requests`` held-out rows (as JSON rows) and their true targets (labels as
    :func:`_label_key`, a regression target as a float)."""
    schema = config.dataset_schema
    order = np.random.default_rng(config.random_state).permutation(len(holdout))
    picks = np.resize(order, config.monitor_requests)  # cycles when there are fewer rows than requests
    sample = holdout.iloc[picks].reset_index(drop=True)
    if config.task == "regression":
        truth: list[Any] = [float(v) for v in sample[schema.target]]
    else:
        truth = [_label_key(v) for v in sample[schema.target]]
    return json_rows(sample[schema.feature_names]), truth


def _label_key(value: Any) -> str:
    """Compare labels across JSON and pandas types: 1, 1.0, True and "1" are the same class."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _answer_task(body: dict[str, Any]) -> str:
    """The task an answer's shape says: no probabilities, a regressor; a probability per class, multiclass."""
    probabilities = body.get("probabilities")
    if probabilities is None:
        return "regression"
    first = probabilities[0] if isinstance(probabilities, list) and probabilities else None
    return "multiclass" if isinstance(first, dict) else "binary"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_answer(response: httpx.Response, rows: int, version: str | None, task: str | None) -> dict[str, Any]:
    """The parsed body of a good /predict answer for a ``task`` model; raises ValueError describing what is wrong."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    predictions, probabilities = body.get("predictions"), body.get("probabilities")
    if not isinstance(predictions, list) or len(predictions) != rows:
        raise ValueError(f"expected {rows} prediction(s), got {str(predictions)[:200]}")
    task = task or _answer_task(body)
    if task == "regression":
        if not all(_is_number(p) for p in predictions):
            raise ValueError(f"expected a finite number per row from a regressor, got {str(predictions)[:200]}")
    elif not isinstance(probabilities, list) or len(probabilities) != rows:
        raise ValueError(f"expected {rows} probabilities, got {str(probabilities)[:200]}")
    elif task == "multiclass":
        _check_class_probabilities(predictions, probabilities, body.get("classes"))
    elif not all(isinstance(p, (int, float)) and 0.0 <= p <= 1.0 for p in probabilities):
        raise ValueError(f"probabilities outside [0, 1]: {str(probabilities)[:200]}")
    if version is not None and str(body.get("model_version")) != version:
        raise ValueError(f"answered by version {body.get('model_version')}, not {version}")
    return body


def _check_class_probabilities(predictions: list[Any], probabilities: list[Any], classes: Any) -> None:
    """Multiclass: labels among ``classes``, and per row a probability in [0, 1] for each class, summing to 1."""
    if not isinstance(classes, list) or len(classes) < 2:
        raise ValueError(f"expected the model's classes with a multiclass answer, got {str(classes)[:200]}")
    keys = [str(c) for c in classes]
    known = {_label_key(c) for c in classes}
    for row, (label, answer) in enumerate(zip(predictions, probabilities, strict=True)):
        if _label_key(label) not in known:
            raise ValueError(f"row {row}: label {str(label)[:100]} is not one of the classes {keys[:20]}")
        if not isinstance(answer, dict) or sorted(answer) != sorted(keys):
            raise ValueError(f"row {row}: expected a probability for each class {keys[:20]}, got {str(answer)[:200]}")
        values = list(answer.values())
        if not all(isinstance(p, (int, float)) and 0.0 <= p <= 1.0 for p in values):
            raise ValueError(f"row {row}: probabilities outside [0, 1]: {str(answer)[:200]}")
        if abs(sum(values) - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"row {row}: probabilities sum to {sum(values):.9g}, not 1")


def _single_row_checks(
    http: httpx.Client, rows: list[dict[str, Any]], truth: list[Any], live: LiveChecks
) -> list[dict[str, Any] | None]:
    """One request per row, timed and checked; returns each good answer (None where the request failed)."""
    singles: list[dict[str, Any] | None] = []
    for row, label in zip(rows, truth, strict=True):
        live.requests += 1
        started = time.perf_counter()
        try:
            response = http.post("/predict", json={"rows": [row]})
            live.latencies_ms.append((time.perf_counter() - started) * 1000)
            body = _check_answer(response, 1, live.served_version, live.task)
        except (httpx.HTTPError, ValueError) as exc:
            live.fail(f"single-row check: {type(exc).__name__}: {exc}")
            singles.append(None)
            continue
        singles.append(body)
        if live.task == "regression":
            if math.isfinite(label):  # a row without a known target cannot be scored
                live.scored += 1
                live.absolute_errors.append(abs(body["predictions"][0] - label))
        else:
            live.scored += 1
            live.correct += int(_label_key(body["predictions"][0]) == label)
    return singles


def _batch_check(
    http: httpx.Client, rows: list[dict[str, Any]], singles: list[dict[str, Any] | None], live: LiveChecks
) -> None:
    """All rows in one request: the answers must be the single-row answers."""
    live.requests += 1
    started = time.perf_counter()
    try:
        response = http.post("/predict", json={"rows": rows})
        live.batch["latency_ms"] = (time.perf_counter() - started) * 1000
        body = _check_answer(response, len(rows), live.served_version, live.task)
    except (httpx.HTTPError, ValueError) as exc:
        live.fail(f"batch check ({len(rows)} rows): {type(exc).__name__}: {exc}")
        live.batch["ok"] = False
        return
    disagree = [i for i, single in enumerate(singles) if single is not None and _disagree(single, body, i)]
    live.batch.update(rows=len(rows), disagreements=len(disagree))
    live.batch["ok"] = not disagree
    if disagree:
        live.fail(f"batch and single-row answers disagree on {len(disagree)} of {len(rows)} rows")


def _disagree(single: dict[str, Any], batch: dict[str, Any], row: int) -> bool:
    """Whether the single-row answer and row ``row`` of the batch answer differ (label, probabilities or number)."""
    one, other = single["predictions"][0], batch["predictions"][row]
    if single.get("probabilities") is None:  # a regressor's numbers
        return not abs(one - other) <= _BATCH_TOLERANCE * max(1.0, abs(other))
    if _label_key(one) != _label_key(other):
        return True
    p, q = single["probabilities"][0], batch["probabilities"][row]
    if isinstance(p, dict):  # multiclass: every class's probability
        return not (isinstance(q, dict) and all(abs(p[key] - q.get(key, math.inf)) <= _BATCH_TOLERANCE for key in p))
    return abs(p - q) > _BATCH_TOLERANCE


def _judge(live: LiveChecks) -> None:
    """Failed checks and a slow p95 are ill health."""
    if live.failures:
        live.problems.append(
            f"{live.failures} of {live.requests} live prediction checks failed (first: {live.errors[0]})"
        )
    p95 = live.latency_percentile_ms(95)
    if p95 is not None and p95 > live.latency_budget_ms:
        live.problems.append(
            f"latency p95 {p95:.1f} ms exceeds the budget of {live.latency_budget_ms:g} ms "
            f"(p50 {live.latency_percentile_ms(50):.1f} ms over {len(live.latencies_ms)} requests)"
        )
