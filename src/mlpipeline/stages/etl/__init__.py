"""ETL stage: validate a raw snapshot against the dataset schema, quarantine bad rows, clean, impute, dedupe,
engineer features, and write Parquet plus a data profile under ``data/processed/<run>/``; decide what the data
says (an ``auto`` task, a binary task's unset positive label, undeclared feature columns) and record it in the
:class:`EtlResult`, from which :func:`resolved_config` gives the config every later stage runs on.

The feature columns are ``dataset_schema.columns``, or, when unset, inferred from the snapshot and frozen by
:func:`mlpipeline.stages.schema.resolve_schema`; ``dataset_schema.exclude`` columns are never used. The snapshot is
processed in chunks of ``config.etl_chunk_rows`` rows, so memory stays bounded as the data grows (a few bytes per
row are kept: 64-bit row hashes), using ``config.etl_threads`` threads (0: one per core):

1. Pass 1 over the raw chunks (:mod:`.reading`, :mod:`.coerce`, :mod:`.hashing`, :mod:`.pass_one`), the next chunk
   read while the current one is typed: type every column (the columns side by side: Arrow compute kernels, polars
   for plain decimals, numpy on the bytes for plain dates, pandas for the rare values the fast paths do not cover),
   append bad rows with their reason to ``quarantine.csv`` (on a pool thread while the clean rows are staged),
   write the clean rows (the target as text) to the staging file (:mod:`.staging`, Arrow IPC), hash each clean row
   (polars) and count the target's values.
2. The task (:mod:`.target`): ``task``, or for ``auto`` decided by :func:`mlpipeline.tasks.decide_task` from the
   clean target values; binary targets become 0/1 (1 = ``positive_label``, or when unset a 1 / true / yes label,
   else the rarer class), multiclass targets keep their labels (int64 if all whole numbers, float64 if numbers,
   else text), regression targets are float64.
3. Dedupe over the whole dataset (:mod:`.dataset`): a row is kept if no earlier clean row has the same hash (the
   target's value as the task writes it included).
4. Imputation statistics over the whole deduplicated dataset, one staged column at a time per thread (several
   threads only while those whole columns hold no more values than a chunk or an output row group did)
   (:mod:`.dataset`).
5. Pass 2 over the staged batches (:mod:`.pass_two`, :mod:`.output`): drop duplicates, impute, final types, date
   parts -> ``features.parquet``.
6. The profile (:mod:`.pass_two`, :mod:`.profiling`), without reading the output back: text, booleans and labels
   counted from pass 2's batches; numbers and dates described whole, rebuilt from the kept staged values (during
   the write while that fits in a chunk's values, else after it, columns side by side as in step 4); with the
   task and the class counts (or the target's range).

:mod:`.stage` runs these steps. The result depends on neither the chunk size nor the threads
(``tests/stages/etl/test_identical_outputs.py`` holds it to golden outputs).

The engine, measured on this workload (issue 14): polars' string expressions (trim, missing tokens, regex checks,
casts) typed a 250,000-row chunk 2-4x slower than the same Arrow kernels, and DuckDB's whole cleaning was within
10 % of polars'; so typing stays on Arrow's kernels, run in parallel, and polars does what it is clearly faster at
here: hashing rows (0.2 s instead of 0.8 s per million rows, profiled), and matching and parsing plain decimals
(its regex and float parser about twice as fast as Arrow's per column).

Refused with a clear, non-retryable :class:`EtlError` (nothing is written under ``processed/<run>/``): a header
naming a column twice; a schema that cannot be inferred; more than ``max_bad_row_fraction`` bad rows (the
quarantine is kept for inspection); a target that does not make its task: a binary one with more than two
classes, a ``positive_label`` that never occurs or only the positive class among the clean rows, a single class,
more than :data:`mlpipeline.tasks.MAX_CLASSES` classes (an id or free text), a constant regression target; a
declared column blank in more than ``max_missing_fraction`` of the clean rows; fewer than ``min_rows`` rows left.
Quarantined, each with its reason: a missing target (for a regression also one that is not a finite number),
values longer than ``max_cell_chars``, values that do not parse or break the declared bounds, and non-finite
numbers (``inf``; ``NaN`` spelled as a missing token counts as missing, as in pandas). The quarantine file holds at
most ``max_quarantine_rows`` rows, each value cut to 1,000 characters; all bad rows are counted.
"""

from mlpipeline.stages.etl.coerce import PYTHON_WHITESPACE
from mlpipeline.stages.etl.profiling import profile, profile_parquet
from mlpipeline.stages.etl.result import (
    FEATURES_FILE,
    PROFILE_FILE,
    QUARANTINE_FILE,
    RECORD_FILE,
    TARGET_LABEL_COLUMN,
    EtlError,
    EtlResult,
    resolved_config,
)
from mlpipeline.stages.etl.stage import etl

__all__ = [
    "FEATURES_FILE",
    "PROFILE_FILE",
    "PYTHON_WHITESPACE",
    "QUARANTINE_FILE",
    "RECORD_FILE",
    "TARGET_LABEL_COLUMN",
    "EtlError",
    "EtlResult",
    "etl",
    "profile",
    "profile_parquet",
    "resolved_config",
]
