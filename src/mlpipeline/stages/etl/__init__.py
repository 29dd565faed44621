"""ETL stage: validate a raw snapshot against the declared schema, quarantine bad rows, clean, impute,
dedupe, engineer features, and write Parquet plus a data profile under ``data/processed/<run>/``.

The snapshot is processed in chunks of ``config.etl_chunk_rows`` rows, so memory stays bounded as the data grows
(a few bytes per row are kept: a 64-bit row hash and the target bits):

1. Pass 1 over the raw chunks (:mod:`.reading`, :mod:`.coerce`, :mod:`.hashing`, :mod:`.pass_one`): type every
   column (Arrow compute, with pandas for the rare values the fast paths do not cover), append bad rows with their
   reason to ``quarantine.csv``, write the clean rows to a staging Parquet file, and hash each clean row.
2. Dedupe over the whole dataset (:mod:`.dataset`): a row is kept if no earlier clean row has the same hash.
3. Imputation statistics over the whole deduplicated dataset, one staged column at a time (:mod:`.dataset`).
4. Pass 2 over the staged row groups (:mod:`.output`): drop duplicates, impute, final types, date parts ->
   ``features.parquet``.
5. The profile, one output column at a time (:mod:`.profiling`).

:mod:`.stage` runs these steps. The result does not depend on the chunk size.

Refused with a clear, non-retryable :class:`EtlError` (nothing is written under ``processed/<run>/``): a header
naming a column twice; more than ``max_bad_row_fraction`` bad rows (the quarantine is kept for inspection); a
``positive_label`` that never occurs, or only the positive class, among the clean rows; a declared column blank in
more than ``max_missing_fraction`` of the clean rows; fewer than ``min_rows`` rows left. Quarantined, each with its
reason: values longer than ``max_cell_chars``, values that do not parse or break the declared bounds, and
non-finite numbers (``inf``; ``NaN`` spelled as a missing token counts as missing, as in pandas). The quarantine
file holds at most ``max_quarantine_rows`` rows, each value cut to 1,000 characters; all bad rows are counted.
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
]
