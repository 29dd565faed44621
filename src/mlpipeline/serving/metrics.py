"""Prometheus metrics of one server app, and the ASGI middleware that counts and times its requests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter as Tally
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from mlpipeline.serving.loading import LoadedModel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Predicted labels get their own series up to this many distinct values; the rest share "other" (a model with
# thousands of classes, or a swap to one with other labels, must not blow up the label cardinality).
MAX_LABEL_VALUES = 50
OTHER_LABEL = "other"


class ServingMetrics:
    """Prometheus metrics in a per-app registry (several apps can coexist in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mlpipeline_serving_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlpipeline_serving_request_latency_seconds",
            "HTTP request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter("mlpipeline_serving_predictions", "Rows predicted.", registry=self.registry)
        self.model_version = Gauge(
            "mlpipeline_serving_model_version", "Served model version (0 = none).", registry=self.registry
        )
        self.fast_path_active = Gauge(
            "mlpipeline_serving_fast_path_active",
            "1 if the served version answers small requests through the numpy fast path, 0 if through scikit-learn "
            "(GET /model says why).",
            registry=self.registry,
        )
        self.reloads = Counter(
            "mlpipeline_serving_model_reloads", "Model versions loaded and swapped in.", registry=self.registry
        )
        self.reload_failures = Counter(
            "mlpipeline_serving_model_reload_failures",
            "Failed attempts to read the alias or load a version.",
            registry=self.registry,
        )
        self.predicted_labels = Counter(
            "mlpipeline_serving_predicted_labels",
            f"Rows predicted per label (classifiers; at most {MAX_LABEL_VALUES} label values, the rest "
            f"'{OTHER_LABEL}').",
            ["label"],
            registry=self.registry,
        )
        self._label_values: set[str] = set()
        self._label_lock = threading.Lock()
        self.prediction_log_written = Counter(
            "mlpipeline_serving_prediction_log_written",
            "Requests written to the prediction log.",
            registry=self.registry,
        )
        self.prediction_log_dropped = Counter(
            "mlpipeline_serving_prediction_log_dropped",
            "Requests the prediction log dropped (queue full, database down or refusing them, shutdown).",
            registry=self.registry,
        )
        self.prediction_log_queue_depth = Gauge(
            "mlpipeline_serving_prediction_log_queue_depth",
            "Predicted rows (a refused request counts one) waiting for the prediction log's writer.",
            registry=self.registry,
        )
        self.feedback = Counter(
            "mlpipeline_serving_feedback", "Actual outcomes stored through POST /feedback.", registry=self.registry
        )

    def count_labels(self, predictions: Sequence[object]) -> None:
        """Count a classifier's answers per label (bounded label set, see MAX_LABEL_VALUES)."""
        tally = Tally(predictions) if len(predictions) > 1 else {predictions[0]: 1}
        for label, count in tally.items():
            self.predicted_labels.labels(self._label_value(str(label))).inc(count)

    def _label_value(self, label: str) -> str:
        if label in self._label_values:
            return label
        with self._label_lock:
            if len(self._label_values) < MAX_LABEL_VALUES:
                self._label_values.add(label)
                return label
        return OTHER_LABEL

    def serving(self, model: LoadedModel | None) -> None:
        """Record which version is served now (None: none)."""
        self.fast_path_active.set(1 if model is not None and model.fast_path.active else 0)
        if model is None:
            self.model_version.set(0)
            return
        with contextlib.suppress(ValueError):  # a non-numeric version leaves the gauge as it was
            self.model_version.set(float(model.version))


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): request count by endpoint/status, and latency."""

    def __init__(self, app: Any, metrics: ServingMetrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Unknown paths share one label so scanners cannot blow up the label cardinality.
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
