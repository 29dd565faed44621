"""The model server: FastAPI app serving the registry's champion, with hot swap (``python -m mlpipeline.serving``).

Serves ``models:/<name>@<alias>`` from the MLflow registry as a native scikit-learn object (fast ``predict_proba``)
and validates requests against the model's logged input signature. A background thread watches the alias; a new
version is loaded and warmed up completely before one reference is swapped.

Only ``POST /reload`` and ``POST /feedback`` change state, and they need ``Authorization: Bearer
$MLPIPELINE_SERVING_TOKEN``; ``/predict``, ``/health`` (503 while no model is served), ``/live``, ``/model`` and
``/metrics`` are open, for callers inside the network.

With ``MLPIPELINE_PREDICTION_LOG_URL`` set, every ``/predict`` request (or the fraction
``MLPIPELINE_PREDICTION_LOG_SAMPLE``) is written to the prediction log (:mod:`mlpipeline.prediction_store`) by a
writer process (:mod:`mlpipeline.prediction_writer`), off the request path, with the version that answered it; its
answer carries ``request_id``, which ``POST /feedback`` takes with the actual outcome.

Modules: ``settings`` (environment/CLI settings), ``schema`` (input schema, request value conversion, InputError),
``guards`` (bearer-token dependency, body size limit, bounded error bodies), ``loading`` (load_model_version,
LoadedModel), ``fastpath`` (the numpy fast path and its verification), ``state`` (ModelServer: polling, hot swap),
``metrics`` (Prometheus metrics, middleware), ``routes`` (endpoints), ``openapi`` (the /predict rows of the served
model, its answers per task), ``prediction_log`` (the bounded queue to the writer process), ``feedback`` (checking
and storing outcomes), ``app`` (create_app, app_from_env), ``cli`` (main, ServerThread, serve_in_thread).

``/predict`` answers by the task of the served model (read from the model, not a tag): a classifier gives
``predictions`` (labels, as its classes), ``probabilities`` (binary: P(positive, the last class) per row;
multiclass: ``{class label as text: probability}`` per row) and ``classes``; a regressor gives ``predictions``
(numbers) only. ``/model`` reports ``task`` and ``classes``.
"""

import os

# One BLAS/OpenMP thread per process: the server already runs requests on several threads, and extra compute threads
# only fight them for the cores. Must happen before numpy/scikit-learn load their thread pools, so here, before any
# submodule is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Model downloads happen on every reload; progress bars would only clutter the server log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlpipeline.serving.app import app_for, app_from_env, create_app
from mlpipeline.serving.cli import ServerThread, main, serve_in_thread
from mlpipeline.serving.fastpath import FastPathStatus
from mlpipeline.serving.loading import LoadedModel, load_model_version
from mlpipeline.serving.metrics import ServingMetrics
from mlpipeline.serving.schema import InputColumn, InputError, InputSchema
from mlpipeline.serving.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS, DEFAULT_POLL_SECONDS, ServerSettings
from mlpipeline.serving.state import ModelServer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_POLL_SECONDS",
    "FastPathStatus",
    "InputColumn",
    "InputError",
    "InputSchema",
    "LoadedModel",
    "ModelServer",
    "ServerSettings",
    "ServerThread",
    "ServingMetrics",
    "app_for",
    "app_from_env",
    "create_app",
    "load_model_version",
    "main",
    "serve_in_thread",
]
