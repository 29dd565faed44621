"""Live traffic for the model server, to watch monitoring work: a burst of ``/predict`` requests on held-out rows of
a run (a slice of them drifted: a few numeric features shifted and scaled), then the true outcomes posted to
``/feedback`` for most of the rows, optionally some of them wrong to pull the live score down.

    python -m mlpipeline.dev.traffic <data_dir>/runs/<run> [--serving-url URL] [--rows 500] [--drift-shift 1.5]
        [--drift-fraction 0.5] [--wrong-fraction 0.3]

The serving token (``MLPIPELINE_SERVING_TOKEN``) comes from the environment, as the model server's does. Only rows
whose answer carries a ``request_id`` (the server logged them: the prediction log is on and sampled them) can get
feedback; the others are counted as not logged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from mlpipeline.config import PipelineConfig, read_config
from mlpipeline.constants import SERVING_TOKEN_ENV
from mlpipeline.dataset import DatasetSchema
from mlpipeline.payload import json_rows, json_value
from mlpipeline.storage import DataLayout, read_json

FEEDBACK_BATCH = 500  # below the server's limit of items per /feedback body
NUMERIC_TYPES = ("numeric", "integer")


class TrafficError(RuntimeError):
    """The model server refused the traffic or the feedback; the message has its answer."""


@dataclass(frozen=True)
class DriftSpec:
    """The drifted slice: ``columns`` (empty: the first ``count`` numeric features) become ``value * scale + shift
    * std`` (the column's standard deviation in the held-out rows), kept within the schema's declared bounds, on
    the last ``fraction`` of the traffic's rows."""

    columns: tuple[str, ...] = ()
    count: int = 3
    shift: float = 1.5
    scale: float = 1.0
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"the drifted fraction must be within 0..1, got {self.fraction}")
        if self.count < 0:
            raise ValueError(f"the number of drifted columns must be 0 or more, got {self.count}")


@dataclass(frozen=True)
class TrafficPlan:
    rows: int = 500
    batch_size: int = 20
    feedback_fraction: float = 0.9  # of the logged rows, how many get their outcome posted
    wrong_fraction: float = 0.0  # of the posted outcomes, how many are deliberately wrong
    drift: DriftSpec | None = field(default_factory=DriftSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.batch_size < 1:
            raise ValueError(f"rows and batch size must be at least 1, got {self.rows} and {self.batch_size}")
        for name in ("feedback_fraction", "wrong_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")


@dataclass
class TrafficResult:
    serving_url: str
    model_versions: list[str]
    requests: int
    rows_sent: int
    rows_logged: int  # rows whose answer carried a request_id
    drifted_columns: list[str]
    drifted_rows: int
    feedback_sent: int
    feedback_wrong: int
    request_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        drift = f"{self.drifted_rows} drifted on {', '.join(self.drifted_columns)}" if self.drifted_rows else "none"
        return (
            f"{self.rows_sent} rows in {self.requests} requests (model v{', v'.join(self.model_versions)}),"
            f" {self.rows_logged} logged, drifted: {drift}; feedback for {self.feedback_sent} rows"
            f" ({self.feedback_wrong} wrong)"
        )


def run_holdout(records: Path) -> tuple[PipelineConfig, pd.DataFrame, pd.Series]:
    """A trained run's resolved config and its chosen candidate's held-out features and labels."""
    from mlpipeline.stages.train import load_holdout  # scikit-learn and MLflow: only when a run's rows are read

    config_path = records / "config.resolved.json"
    decision_path = records / "validate.json"
    if not config_path.is_file() or not decision_path.is_file():
        raise TrafficError(
            f"{records} is not the records of a run that trained (no config.resolved.json/validate.json)"
        )
    config = read_config(str(config_path))
    candidate = read_json(decision_path)["candidate"]
    holdout = DataLayout.of(records.resolve().parent.parent).models(records.name) / candidate / "holdout.parquet"
    features, labels = load_holdout(holdout, config.dataset_schema)
    return config, features, labels


def drift_columns(schema: DatasetSchema, features: pd.DataFrame, spec: DriftSpec) -> list[str]:
    if spec.columns:
        unknown = [name for name in spec.columns if name not in features.columns]
        if unknown:
            raise ValueError(f"drift column(s) {unknown} are not features of the model ({list(features.columns)})")
        return list(spec.columns)
    numeric = [c.name for c in schema.resolved_columns() if c.type in NUMERIC_TYPES and c.name in features.columns]
    return numeric[: spec.count]


def apply_drift(
    frame: pd.DataFrame, schema: DatasetSchema, columns: list[str], spec: DriftSpec, reference: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """``frame`` with its last ``spec.fraction`` of rows drifted on ``columns``; and how many rows that is."""
    drifted = frame.copy()
    count = round(len(frame) * spec.fraction)
    if count == 0 or not columns:
        return drifted, 0
    specs = {c.name: c for c in schema.resolved_columns()}
    rows = drifted.index[-count:]
    for name in columns:
        values = pd.to_numeric(drifted[name], errors="coerce").astype(float)
        spread = float(pd.to_numeric(reference[name], errors="coerce").std()) or 1.0
        moved = values.loc[rows] * spec.scale + spec.shift * spread
        column = specs.get(name)
        if column is not None:
            moved = moved.clip(lower=column.min, upper=column.max)
            if column.type == "integer":
                moved = moved.round()  # whole numbers: the server takes 12.0 for an integer column
        values.loc[rows] = moved
        drifted[name] = values
    return drifted, count


def _answer_classes(body: dict[str, Any]) -> list[Any] | None:
    classes = body.get("classes")
    return list(classes) if isinstance(classes, list) else None


def send_predictions(
    http: httpx.Client, frame: pd.DataFrame, batch_size: int
) -> tuple[list[tuple[str, int, int]], set[str], list[Any] | None, int]:
    """POST the rows in batches; returns (request id, row in its request, position in ``frame``) of every logged
    row, the model versions that answered, the classifier's classes (None: a regressor) and the request count."""
    logged: list[tuple[str, int, int]] = []
    versions: set[str] = set()
    classes: list[Any] | None = None
    requests = 0
    for start in range(0, len(frame), batch_size):
        batch = frame.iloc[start : start + batch_size]
        response = http.post("/predict", json={"rows": json_rows(batch)})
        requests += 1
        if response.status_code != 200:
            raise TrafficError(f"/predict answered HTTP {response.status_code}: {response.text[:500]}")
        body = response.json()
        versions.add(str(body.get("model_version")))
        classes = _answer_classes(body) or classes
        request_id = body.get("request_id")
        if isinstance(request_id, str):
            logged.extend((request_id, row, start + row) for row in range(len(batch)))
    return logged, versions, classes, requests


def _as_answered(label: Any, classes: list[Any] | None) -> Any:
    """A true label in the JSON type /predict answers its classes in (the server refuses "1" for a class 1)."""
    value = json_value(label)
    if classes is None:
        return float(value)
    return next((c for c in classes if str(c) == str(value)), value)


def _wrong(actual: Any, classes: list[Any] | None, spread: float, rng: np.random.Generator) -> Any:
    if classes is None:
        return actual + 3.0 * (spread or 1.0)  # far off: a regressor's live error grows
    others = [c for c in classes if c != actual]
    return others[int(rng.integers(len(others)))] if others else actual


def post_feedback(http: httpx.Client, token: str, items: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for start in range(0, len(items), FEEDBACK_BATCH):
        body = {"feedback": items[start : start + FEEDBACK_BATCH]}
        response = http.post("/feedback", json=body, headers=headers)
        if response.status_code not in (200, 201, 202):
            raise TrafficError(f"/feedback answered HTTP {response.status_code}: {response.text[:500]}")


def send_traffic(
    serving_url: str,
    features: pd.DataFrame,
    labels: pd.Series,
    schema: DatasetSchema,
    plan: TrafficPlan,
    *,
    token: str,
    timeout: float = 30.0,
) -> TrafficResult:
    """Send ``plan.rows`` held-out rows (drawn with the plan's seed; the last slice drifted), then the true outcomes
    of most logged rows (some deliberately wrong, if the plan says so)."""
    if len(features) == 0 or len(features) != len(labels):
        raise ValueError(f"need held-out rows with their labels, got {len(features)} rows and {len(labels)} labels")
    rng = np.random.default_rng(plan.seed)
    picked = rng.choice(len(features), size=plan.rows, replace=plan.rows > len(features))
    frame = features.iloc[picked].reset_index(drop=True)
    truth = labels.iloc[picked].reset_index(drop=True)
    columns = drift_columns(schema, features, plan.drift) if plan.drift else []
    drifted_rows = 0
    if plan.drift:
        frame, drifted_rows = apply_drift(frame, schema, columns, plan.drift, features)
    with httpx.Client(base_url=serving_url, timeout=timeout) as http:
        logged, versions, classes, requests = send_predictions(http, frame, plan.batch_size)
        chosen = [item for item in logged if rng.random() < plan.feedback_fraction]
        spread = float(pd.to_numeric(labels, errors="coerce").std()) if classes is None else 0.0
        items, wrong = [], 0
        for request_id, row, position in chosen:
            actual = _as_answered(truth.iloc[position], classes)
            if rng.random() < plan.wrong_fraction:
                actual, wrong = _wrong(actual, classes, spread, rng), wrong + 1
            items.append({"request_id": request_id, "row": row, "actual": actual})
        if items:
            post_feedback(http, token, items)
    return TrafficResult(
        serving_url=serving_url,
        model_versions=sorted(versions),
        requests=requests,
        rows_sent=len(frame),
        rows_logged=len(logged),
        drifted_columns=columns if drifted_rows else [],
        drifted_rows=drifted_rows,
        feedback_sent=len(items),
        feedback_wrong=wrong,
        request_ids=sorted({request_id for request_id, _, _ in logged}),
    )


def traffic_for_run(
    records: Path, plan: TrafficPlan, *, serving_url: str | None = None, token: str | None = None
) -> TrafficResult:
    """Traffic on a trained run's held-out rows, to ``serving_url`` (default: the run's configured endpoint);
    ``token`` for /feedback (default: ``$MLPIPELINE_SERVING_TOKEN``)."""
    token = token or os.environ.get(SERVING_TOKEN_ENV, "")
    if not token:
        raise TrafficError(f"{SERVING_TOKEN_ENV} is not set: /feedback needs the model server's token")
    config, features, labels = run_holdout(records)
    return send_traffic(serving_url or config.serving_url, features, labels, config.dataset_schema, plan, token=token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.dev.traffic",
        description="Send live traffic (held-out rows of a run, a slice drifted) to the model server, then post the"
        f" true outcomes to /feedback ({SERVING_TOKEN_ENV} from the environment).",
    )
    parser.add_argument("records", help="A trained run's records, <data_dir>/runs/<run>/.")
    parser.add_argument("--serving-url", default=None, help="The model server (default: the run's serving_url).")
    parser.add_argument("--rows", type=int, default=TrafficPlan.rows, help="Rows to send (default %(default)s).")
    parser.add_argument("--batch-size", type=int, default=TrafficPlan.batch_size, help="Rows per request.")
    parser.add_argument("--feedback-fraction", type=float, default=TrafficPlan.feedback_fraction)
    parser.add_argument("--wrong-fraction", type=float, default=TrafficPlan.wrong_fraction)
    parser.add_argument("--drift-columns", default="", help="Columns to drift, by commas (default: numeric ones).")
    parser.add_argument("--drift-count", type=int, default=DriftSpec.count)
    parser.add_argument("--drift-shift", type=float, default=DriftSpec.shift, help="In standard deviations.")
    parser.add_argument("--drift-scale", type=float, default=DriftSpec.scale)
    parser.add_argument("--drift-fraction", type=float, default=DriftSpec.fraction, help="0: no drift.")
    parser.add_argument("--seed", type=int, default=TrafficPlan.seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        drift = DriftSpec(
            columns=tuple(c.strip() for c in args.drift_columns.split(",") if c.strip()),
            count=args.drift_count,
            shift=args.drift_shift,
            scale=args.drift_scale,
            fraction=args.drift_fraction,
        )
        plan = TrafficPlan(
            rows=args.rows,
            batch_size=args.batch_size,
            feedback_fraction=args.feedback_fraction,
            wrong_fraction=args.wrong_fraction,
            drift=drift,
            seed=args.seed,
        )
        result = traffic_for_run(Path(args.records), plan, serving_url=args.serving_url)
    except (TrafficError, ValueError, httpx.HTTPError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(result.summary())
    print(json.dumps({k: v for k, v in result.to_dict().items() if k != "request_ids"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
