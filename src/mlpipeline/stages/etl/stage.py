"""The ETL stage: the schema, pass 1, the whole-dataset decisions (the task among them), pass 2 and the profile,
as named steps."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipeline.config import DatasetSchema, PipelineConfig
from mlpipeline.stages.etl.dataset import first_occurrences
from mlpipeline.stages.etl.output import OUTPUT_ROW_GROUP
from mlpipeline.stages.etl.pass_one import PassOne, etl_threads, read_pass_one, top_reasons
from mlpipeline.stages.etl.pass_two import WholeColumnThreads, write_output_and_profile
from mlpipeline.stages.etl.result import (
    FEATURES_FILE,
    PROFILE_FILE,
    QUARANTINE_FILE,
    RECORD_FILE,
    STAGING_FILE,
    EtlError,
    EtlResult,
)
from mlpipeline.stages.etl.staging import Staging
from mlpipeline.stages.etl.target import TargetPlan, plan_target
from mlpipeline.storage import DataLayout, atomic_directory, read_json, sha256_file

log = logging.getLogger(__name__)


def etl(config: PipelineConfig, *, run: str, raw_data_path: str, raw_format: str) -> EtlResult:
    """Turn the raw snapshot at ``raw_data_path`` into ``data/processed/<run>/``.

    The feature columns are ``dataset_schema.columns``, or inferred (and frozen) by
    :func:`mlpipeline.stages.schema.resolve_schema`; an ``auto`` task is decided from the target's clean values
    (:func:`~mlpipeline.stages.etl.target.plan_target`). The result records both (see :func:`resolved_config`).
    Idempotent: a completed output for this run is returned as it is.
    """
    out_dir = Path(DataLayout.of(config.data_dir).processed(run))
    if (out_dir / RECORD_FILE).exists():
        return EtlResult(**read_json(out_dir / RECORD_FILE))

    started = time.perf_counter()
    schema, excluded = _resolve_schema(config, raw_data_path, raw_format)
    config = config.model_copy(update={"dataset_schema": schema})  # pass 1 reads the columns from the config
    with atomic_directory(out_dir) as tmp:
        # The quarantine is written even when the run fails below, so the bad rows can be inspected.
        state, present = _validate_and_stage(config, raw_data_path, raw_format, tmp)
        _refuse_too_many_bad_rows(
            config, state, tmp / QUARANTINE_FILE, out_dir.parent / f"{run}.rejected-{QUARANTINE_FILE}"
        )
        plan = plan_target(state.target, config.task, schema)
        _refuse_mostly_missing_columns(config, state)
        keep = _dedupe(config, state, tmp / STAGING_FILE, plan)
        fills, data_profile = write_output_and_profile(
            tmp,
            keep,
            plan,
            schema,
            present,
            _whole_column_threads(config, len(keep), len(state.columns)),
        )
        target, classes = _target_summary(tmp / FEATURES_FILE, schema.target, plan)
        _write_profile(tmp, data_profile, state, keep, fills, target)
        if plan.positive_label is not None:
            schema = schema.model_copy(update={"positive_label": plan.positive_label})
        excluded = excluded or _not_features(state.columns, schema)
        result = _result(out_dir, tmp, state, keep, started, plan, classes, schema, excluded)
        (tmp / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    log.info("target %r: %s task, %s", schema.target, plan.task, {k: v for k, v in target.items() if k != "name"})
    return result


def _resolve_schema(
    config: PipelineConfig, raw_data_path: str, raw_format: str
) -> tuple[DatasetSchema, dict[str, str]]:
    """The declared schema, or the one inferred from (or frozen for) this source; and why columns are left out."""
    schema, excluded = config.dataset_schema, {}
    if not schema.is_resolved:
        # Imported here: the schema module reads snapshots with this package's readers (a cycle at import time).
        from mlpipeline.stages.schema import SchemaError, resolve_schema

        try:
            schema, excluded = resolve_schema(config, raw_data_path, raw_format)
        except SchemaError as exc:
            raise EtlError(f"cannot infer the dataset schema: {exc}") from exc
    if schema.id_column is not None and schema.id_column == schema.target:
        raise EtlError(f"dataset_schema: the target {schema.target!r} is also the id_column")
    return schema, excluded


def _not_features(columns: list[str], schema: DatasetSchema) -> dict[str, str]:
    """Why each source column that is not a declared feature is not one."""
    roles = {schema.target: "the target", **({schema.id_column: "the id column"} if schema.id_column else {})}
    features, exclude = set(schema.feature_names), set(schema.exclude)
    return {
        name: roles.get(name)
        or ("listed in dataset_schema.exclude" if name in exclude else "not in dataset_schema.columns")
        for name in columns
        if name not in features
    }


def _validate_and_stage(
    config: PipelineConfig, raw_data_path: str, raw_format: str, tmp: Path
) -> tuple[PassOne, set[str]]:
    """Pass 1; refuses a snapshot without columns or rows."""
    state, present = read_pass_one(raw_data_path, raw_format, config, tmp)
    pa.default_memory_pool().release_unused()  # the chunks' memory, kept by the allocator for reuse: not needed now
    if not state.columns:
        raise EtlError(f"cannot read the raw snapshot {raw_data_path} as {raw_format}: no columns")
    if state.rows_in == 0:
        raise EtlError(f"the raw snapshot {raw_data_path} has no rows")
    return state, present


def _refuse_too_many_bad_rows(config: PipelineConfig, state: PassOne, quarantine: Path, rejected: Path) -> None:
    """Fail over ``max_bad_row_fraction``, keeping the quarantine next to the run's output for inspection."""
    bad_fraction = state.rows_bad / state.rows_in
    if bad_fraction > config.max_bad_row_fraction:
        quarantine.replace(rejected)
        which = (
            "the rows"
            if state.rows_quarantine_written == state.rows_bad
            else f"the first {state.rows_quarantine_written} rows"
        )
        raise EtlError(
            f"{state.rows_bad} of {state.rows_in} rows ({bad_fraction:.1%}) failed validation, more than "
            f"max_bad_row_fraction={config.max_bad_row_fraction:.1%}; {which} and reasons are in {rejected}"
        )


def _refuse_mostly_missing_columns(config: PipelineConfig, state: PassOne) -> None:
    """Fail when a declared column the source has is blank in more than ``max_missing_fraction`` of the clean rows.

    Refused rather than dropped: the declared columns are the model's input contract (the serving schema, the
    drift reference and the comparison with the champion all use the same features), so dropping one would
    quietly change the model's signature, and a column that is suddenly mostly blank means the source broke.
    Imputing it would train on made-up values. (A declared optional column the source lacks entirely is the
    ``required: false`` case and keeps its documented constant fill.)
    """
    clean = state.rows_in - state.rows_bad
    if not clean:
        return  # nothing clean: min_rows says so
    shares = {name: count / clean for name, count in state.missing_counts.items()}
    over = [f"{name[:100]} ({share:.1%})" for name, share in shares.items() if share > config.max_missing_fraction]
    if over:
        raise EtlError(
            f"column(s) missing in more than max_missing_fraction={config.max_missing_fraction:.1%} of the {clean}"
            f" clean rows: {', '.join(over[:20])}{' ...' if len(over) > 20 else ''}; imputing them would train on"
            " made-up values. Fix the source, or raise max_missing_fraction if this is expected"
        )


def _dedupe(config: PipelineConfig, state: PassOne, staging: Path, plan: TargetPlan) -> np.ndarray:
    """Keep-mask over the clean rows without duplicates; refuses fewer than ``min_rows`` kept rows."""
    keep = first_occurrences(state, Staging(staging), config.dataset_schema.target, plan)
    state.hashes.clear()  # the largest per-row arrays: not needed any more
    rows_out = int(keep.sum())
    if rows_out < config.min_rows:
        raise EtlError(f"only {rows_out} clean rows remain, fewer than min_rows={config.min_rows}")
    return keep


def _whole_column_threads(config: PipelineConfig, rows: int, columns: int) -> WholeColumnThreads:
    """How the steps that hold whole columns use ``etl_threads``: as many columns side by side as hold no more
    values than a pass-1 chunk or an output row group did (the memory those sizes allow); the profile described
    during the output's write only while that fits in what a chunk held."""
    threads = etl_threads(config)
    held = threads * rows
    side_by_side = threads if held <= max(config.etl_chunk_rows, OUTPUT_ROW_GROUP) * max(columns, 1) else 1
    return WholeColumnThreads(side_by_side, threads > 1 and held <= config.etl_chunk_rows * max(columns, 1))


def _target_summary(features: Path, target: str, plan: TargetPlan) -> tuple[dict[str, Any], list[Any]]:
    """For the profile: the task and, over the output rows, each class's count (classification) or the target's
    range (regression). Also the classes as the output holds them, sorted ([] for a regression)."""
    data = pq.ParquetFile(features)
    summary: dict[str, Any] = {"name": target, "task": plan.task}
    if plan.task == "regression":
        values = data.read(columns=[target]).column(0)
        low_high = pc.min_max(values).as_py()
        return {**summary, "min": low_high["min"], "mean": pc.mean(values).as_py(), "max": low_high["max"]}, []
    counts: dict[Any, int] = {}
    for group in range(data.num_row_groups):
        for item in pc.value_counts(data.read_row_group(group, columns=[target]).column(0)).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    classes = sorted(counts)
    summary["classes"] = {str(label): counts[label] for label in classes}
    if plan.task == "binary":
        summary.update(positive_label=plan.positive_label, positive_label_from=plan.positive_from)
    return summary, classes


def _write_profile(
    tmp: Path,
    data_profile: dict[str, Any],
    state: PassOne,
    keep: np.ndarray,
    fills: dict[str, Any],
    target: dict[str, Any],
) -> None:
    data_profile.update(
        task=target["task"],
        target=target,
        rows_in=state.rows_in,
        rows_quarantined=state.rows_bad,
        duplicates_dropped=len(keep) - int(keep.sum()),
        imputed_with=fills,
        quarantine_reasons=top_reasons(state.reason_counts),
    )
    if state.rows_quarantine_written < state.rows_bad:  # only then: the profile of valid data stays as it was
        data_profile["quarantine_rows_not_written"] = state.rows_bad - state.rows_quarantine_written
        log.warning(
            "quarantine.csv holds the first %d of %d bad rows (max_quarantine_rows); the reasons of all are counted"
            " in the profile",
            state.rows_quarantine_written,
            state.rows_bad,
        )
    (tmp / PROFILE_FILE).write_text(json.dumps(data_profile, indent=2, default=str))


def _result(
    out_dir: Path,
    tmp: Path,
    state: PassOne,
    keep: np.ndarray,
    started: float,
    plan: TargetPlan,
    classes: list[Any],
    schema: DatasetSchema,
    excluded: dict[str, str],
) -> EtlResult:
    rows_out = int(keep.sum())
    return EtlResult(
        processed_dir=str(out_dir),
        data_path=str(out_dir / FEATURES_FILE),
        quarantine_path=str(out_dir / QUARANTINE_FILE),
        profile_path=str(out_dir / PROFILE_FILE),
        rows_in=state.rows_in,
        rows_out=rows_out,
        rows_quarantined=state.rows_bad,
        duplicates_dropped=len(keep) - rows_out,
        bad_row_fraction=round(state.rows_bad / state.rows_in, 6),
        data_sha256=sha256_file(tmp / FEATURES_FILE),
        seconds=round(time.perf_counter() - started, 3),
        task=plan.task,
        classes=classes,
        positive_label=plan.positive_label,
        schema=schema.model_dump(mode="json"),
        excluded=excluded,
    )
