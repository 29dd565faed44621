"""64-bit row hashes, so duplicates can be found across chunks while keeping only 8 bytes per row.

polars hashes the columns (in parallel, each value's hash a function of the value alone, so one row gets one hash
whatever chunk it is in; polars does not promise the same hashes across its versions, which is fine: they live
for one run). Equal values must hash equally, so numbers are made canonical first: ``-0.0`` is ``0.0`` and NaN is
missing.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

U64 = np.uint64
GOLDEN = U64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64 arithmetic wraps)."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    floats = [name for name, dtype in frame.schema.items() if dtype.is_float()]
    if not floats:
        return frame
    return frame.with_columns((pl.col(name).fill_nan(None) + 0.0).alias(name) for name in floats)


def hash_rows(columns: dict[str, pa.Array], rows: int) -> np.ndarray:
    """One 64-bit hash per row of ``rows``-long ``columns`` (the same columns, in the same order, in every chunk)."""
    if not columns or not rows:
        return np.zeros(rows, dtype=U64)
    frame = _canonical(pl.from_arrow(pa.table(columns)))  # type: ignore[arg-type]
    return frame.hash_rows().to_numpy()


def hash_values(values: pa.Array) -> np.ndarray:
    """One 64-bit hash per value."""
    return hash_rows({"value": values}, len(values))
