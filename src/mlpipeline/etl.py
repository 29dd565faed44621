"""ETL stage: validate a raw snapshot against the declared schema, quarantine bad rows, clean, impute,
dedupe, engineer features, and write Parquet plus a data profile under ``data/processed/<run>/``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.config import ColumnSpec, DatasetSchema, PipelineConfig
from mlpipeline.crawl import read_raw
from mlpipeline.features import add_date_parts
from mlpipeline.storage import DataLayout, atomic_directory, read_json, sha256_file

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.csv"
PROFILE_FILE = "profile.json"
RECORD_FILE = "etl.json"
TARGET_LABEL_COLUMN = "_target_label"

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class EtlError(RuntimeError):
    """The data cannot be turned into a training set; the message says why and where to look."""


@dataclass(frozen=True)
class EtlResult:
    processed_dir: str
    data_path: str
    quarantine_path: str
    profile_path: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    duplicates_dropped: int
    bad_row_fraction: float
    data_sha256: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_text(series: pd.Series) -> pd.Series:
    """Raw values as stripped strings, with blanks as missing (sources disagree on how to say 'nothing')."""
    text = series.astype("string").str.strip()
    return text.mask(text.isin(["", "nan", "NaN", "None", "null", "NULL", "NA", "<NA>"]))


def _coerce_column(raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """Return (typed values, reason-per-row or <NA>) for one declared column."""
    text = _as_text(raw)
    present = text.notna()
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")

    if spec.type in ("numeric", "integer"):
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        reason = reason.mask(present & values.isna(), f"{spec.name}: not a number")
        if spec.type == "integer":
            reason = reason.mask(reason.isna() & values.notna() & (values % 1 != 0), f"{spec.name}: not an integer")
        if spec.min is not None:
            reason = reason.mask(reason.isna() & (values < spec.min), f"{spec.name}: below minimum {spec.min:g}")
        if spec.max is not None:
            reason = reason.mask(reason.isna() & (values > spec.max), f"{spec.name}: above maximum {spec.max:g}")
    elif spec.type == "categorical":
        values = text.astype("object")
        if spec.categories is not None:
            unknown = present & ~text.isin(spec.categories)
            reason = reason.mask(unknown.fillna(False), f"{spec.name}: unknown category")
    elif spec.type == "boolean":
        lowered = text.str.lower()
        values = pd.Series(np.nan, index=raw.index, dtype="object")
        values[lowered.isin(_TRUE).fillna(False)] = True
        values[lowered.isin(_FALSE).fillna(False)] = False
        reason = reason.mask(present & values.isna(), f"{spec.name}: not a boolean")
    elif spec.type == "date":
        values = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_convert(None)
        reason = reason.mask(present & values.isna(), f"{spec.name}: not an ISO date")
    else:  # pragma: no cover - the config type forbids other values
        raise EtlError(f"unsupported column type {spec.type!r}")

    if not spec.nullable:
        reason = reason.mask(reason.isna() & ~present, f"{spec.name}: missing value")
    return values, reason


def _first_reason(reasons: list[pd.Series], index: pd.Index) -> pd.Series:
    combined = pd.Series(pd.NA, index=index, dtype="string")
    for reason in reasons:
        combined = combined.fillna(reason)
    return combined


def _check_columns(frame: pd.DataFrame, schema: DatasetSchema) -> None:
    available = set(frame.columns)
    missing = [schema.target] if schema.target not in available else []
    missing += [c.name for c in schema.columns if c.required and c.name not in available]
    if missing:
        raise EtlError(
            f"the source is missing required column(s) {missing}; it has {sorted(available)}. "
            "Fix the source or the dataset_schema setting."
        )


def _impute(frame: pd.DataFrame, schema: DatasetSchema) -> dict[str, Any]:
    """Fill missing feature values in place; return what each column was filled with."""
    fills: dict[str, Any] = {}
    for spec in schema.columns:
        column = frame[spec.name]
        if not column.isna().any():
            continue
        if spec.type in ("numeric", "integer"):
            fill: Any = float(column.median()) if column.notna().any() else 0.0
            if spec.type == "integer":
                fill = float(round(fill))
        elif spec.type == "date":
            fill = column.dropna().sort_values().iloc[len(column.dropna()) // 2] if column.notna().any() else None
        else:
            mode = column.dropna().mode()
            fill = mode.iloc[0] if not mode.empty else ("missing" if spec.type == "categorical" else False)
        if fill is not None:
            frame[spec.name] = column.where(column.notna(), fill)
        fills[spec.name] = fill.isoformat() if isinstance(fill, pd.Timestamp) else fill
    return fills


def _final_types(frame: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    for spec in schema.columns:
        if spec.type == "integer" and frame[spec.name].notna().all():
            frame[spec.name] = frame[spec.name].astype("int64")
        elif spec.type == "boolean" and frame[spec.name].notna().all():
            frame[spec.name] = frame[spec.name].astype("bool")
        elif spec.type == "categorical":
            frame[spec.name] = frame[spec.name].astype("object")
    return frame


def profile(frame: pd.DataFrame, schema: DatasetSchema) -> dict[str, Any]:
    """Per-column statistics of a processed dataset (also the reference for drift monitoring)."""
    columns: dict[str, Any] = {}
    types = {c.name: c.type for c in schema.columns}
    for name in frame.columns:
        series = frame[name]
        stats: dict[str, Any] = {"dtype": str(series.dtype), "missing": int(series.isna().sum())}
        kind = types.get(name, "target" if name == schema.target else "derived")
        stats["kind"] = kind
        if kind == "date":
            stats.update(min=str(series.min()), max=str(series.max()))
        elif pd.api.types.is_bool_dtype(series) or kind in ("categorical", "boolean", "target"):
            counts = series.astype("string").value_counts(normalize=True).head(20)
            stats["frequencies"] = {str(k): round(float(v), 6) for k, v in counts.items()}
        elif pd.api.types.is_numeric_dtype(series):
            described = series.describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95])
            stats.update({str(k): (None if pd.isna(v) else float(v)) for k, v in described.items() if k != "count"})
        columns[name] = stats
    return {"rows": len(frame), "columns": columns}


def _target_as_binary(raw: pd.Series, schema: DatasetSchema) -> tuple[pd.Series, pd.Series]:
    text = _as_text(raw)
    numeric = pd.to_numeric(text, errors="coerce")
    # "1" and "1.0" are the same label; compare numbers numerically when the labels are numbers.
    positive_number = pd.to_numeric(pd.Series([schema.positive_label]), errors="coerce").iloc[0]
    if pd.notna(positive_number) and numeric[text.notna()].notna().all():
        labels = numeric
        is_positive = labels == positive_number
    else:
        labels = text
        is_positive = text == schema.positive_label
    reason = pd.Series(pd.NA, index=raw.index, dtype="string").mask(text.isna(), f"{schema.target}: missing target")
    distinct = labels.dropna().unique()
    if len(distinct) > 2:
        raise EtlError(
            f"target {schema.target!r} has {len(distinct)} distinct values ({list(distinct)[:5]}...); "
            "only binary classification is supported"
        )
    return is_positive.fillna(False).astype("int64"), reason


def etl(config: PipelineConfig, *, run: str, raw_data_path: str, raw_format: str) -> EtlResult:
    """Turn the raw snapshot at ``raw_data_path`` into ``data/processed/<run>/``.

    Idempotent: a completed output for this run is returned as it is.
    """
    layout = DataLayout.of(config.data_dir)
    out_dir = layout.processed(run)
    if (out_dir / RECORD_FILE).exists():
        return EtlResult(**read_json(out_dir / RECORD_FILE))

    started = time.perf_counter()
    schema = config.dataset_schema
    try:
        raw = read_raw(raw_data_path, raw_format)
    except Exception as exc:
        raise EtlError(f"cannot read the raw snapshot {raw_data_path} as {raw_format}: {exc}") from exc
    _check_columns(raw, schema)
    rows_in = len(raw)
    if rows_in == 0:
        raise EtlError(f"the raw snapshot {raw_data_path} has no rows")

    clean = pd.DataFrame(index=raw.index)
    reasons = []
    for spec in schema.columns:
        if spec.name not in raw.columns:  # optional column the source does not have
            clean[spec.name] = pd.Series(np.nan, index=raw.index)
            continue
        values, reason = _coerce_column(raw[spec.name], spec)
        clean[spec.name] = values
        reasons.append(reason)
    target, target_reason = _target_as_binary(raw[schema.target], schema)
    reasons.insert(0, target_reason)
    clean[schema.target] = target
    if schema.id_column and schema.id_column in raw.columns:
        clean.insert(0, schema.id_column, _as_text(raw[schema.id_column]).astype("object"))

    reason = _first_reason(reasons, raw.index)
    bad = reason.notna()
    quarantined = raw[bad].astype("string").assign(_row_number=np.flatnonzero(bad.to_numpy()) + 1)
    quarantined["_reason"] = reason[bad]
    bad_fraction = float(bad.mean())

    clean = clean[~bad.to_numpy()].reset_index(drop=True)
    before_dedupe = len(clean)
    clean = clean.drop_duplicates().reset_index(drop=True)
    duplicates = before_dedupe - len(clean)

    fills = _impute(clean, schema)
    clean = _final_types(clean, schema)
    clean = add_date_parts(clean, schema.columns_of_type("date"))

    with atomic_directory(out_dir) as tmp:
        # The quarantine is written even when the run fails below, so the bad rows can be inspected.
        quarantine_path = tmp / QUARANTINE_FILE
        quarantined.to_csv(quarantine_path, index=False)
        if bad_fraction > config.max_bad_row_fraction:
            kept = out_dir.parent / f"{run}.rejected-{QUARANTINE_FILE}"
            quarantine_path.replace(kept)
            raise EtlError(
                f"{int(bad.sum())} of {rows_in} rows ({bad_fraction:.1%}) failed validation, more than "
                f"max_bad_row_fraction={config.max_bad_row_fraction:.1%}; the rows and reasons are in {kept}"
            )
        if len(clean) < config.min_rows:
            raise EtlError(f"only {len(clean)} clean rows remain, fewer than min_rows={config.min_rows}")

        clean.to_parquet(tmp / FEATURES_FILE, index=False)
        data_profile = profile(clean, schema)
        data_profile.update(
            rows_in=rows_in,
            rows_quarantined=int(bad.sum()),
            duplicates_dropped=duplicates,
            imputed_with=fills,
            quarantine_reasons=reason[bad].value_counts().head(50).to_dict(),
        )
        (tmp / PROFILE_FILE).write_text(json.dumps(data_profile, indent=2, default=str))
        final = Path(out_dir)
        result = EtlResult(
            processed_dir=str(final),
            data_path=str(final / FEATURES_FILE),
            quarantine_path=str(final / QUARANTINE_FILE),
            profile_path=str(final / PROFILE_FILE),
            rows_in=rows_in,
            rows_out=len(clean),
            rows_quarantined=int(bad.sum()),
            duplicates_dropped=duplicates,
            bad_row_fraction=round(bad_fraction, 6),
            data_sha256=sha256_file(tmp / FEATURES_FILE),
            seconds=round(time.perf_counter() - started, 3),
        )
        (tmp / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result
