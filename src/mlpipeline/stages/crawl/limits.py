"""How large a Parquet body really is, found out before any column is expanded (a "Parquet bomb" is refused).

A few KB of Parquet can hold GiBs: compression (a page of zeros), run-length encoding (millions of equal values)
and dictionaries (one long string that every row refers to) all expand when the file is read. The wire-size limit
(``crawl_max_bytes``) says nothing about that, so the crawl checks, in this order:

1. From the footer alone (no page is read): the row count against ``crawl_max_rows``; the uncompressed size of all
   pages, and the decoded size of the fixed-width values (every value's width times the number of values, which
   run-length encoding cannot hide), against ``crawl_max_uncompressed_bytes``.
2. Reading the file in batches with every byte-array (string) column kept dictionary-encoded, so a dictionary bomb
   stays small: the size each batch will have once its strings are expanded (the dictionary entries' lengths
   summed over the rows that refer to them), stopping as soon as the total passes the limit.

What passes has, decoded, at most ``crawl_max_uncompressed_bytes``: the ETL can read it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipeline.config import PipelineConfig
from mlpipeline.stages.crawl.result import CrawlError

# Decoded bytes per value of each Parquet physical type; BYTE_ARRAY counts its 4-byte offset (the text comes on
# top, measured in step 2), FIXED_LEN_BYTE_ARRAY its declared length.
_VALUE_BYTES = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12, "BYTE_ARRAY": 4}
_BATCH_VALUES = 65_536  # values per column in one batch of step 2 (fewer rows when lists hold many values a row)


def parquet_rows(path: Path, config: PipelineConfig, url: str) -> int:
    """The rows of the Parquet file at ``path``, refusing one that is, or expands to, more than the limits allow."""
    parquet = pq.ParquetFile(path)
    metadata = parquet.metadata
    _check_footer(metadata, config, url)
    strings = [
        metadata.schema.column(i).path
        for i in range(metadata.num_columns)
        if metadata.schema.column(i).physical_type == "BYTE_ARRAY"
    ]
    parquet = pq.ParquetFile(path, read_dictionary=strings)
    rows = decoded = 0
    for batch in parquet.iter_batches(batch_size=_batch_rows(metadata)):
        rows += batch.num_rows
        decoded += sum(_decoded_bytes(column) for column in batch.columns)
        if decoded > config.crawl_max_uncompressed_bytes:
            raise _too_large(url, config, f"more than {decoded} bytes once its values are decoded (stopped there)")
    return rows


def _check_footer(metadata: pq.FileMetaData, config: PipelineConfig, url: str) -> None:
    if metadata.num_rows > config.crawl_max_rows:
        raise CrawlError(
            f"{url}: the Parquet file declares {metadata.num_rows} rows, more than crawl_max_rows="
            f"{config.crawl_max_rows}; refused before reading it. Raise crawl_max_rows if this size is expected"
        )
    uncompressed = fixed_width = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            uncompressed += chunk.total_uncompressed_size
            width = _VALUE_BYTES.get(chunk.physical_type) or metadata.schema.column(index).length or 0
            fixed_width += chunk.num_values * width
    for what, size in (("uncompressed", uncompressed), ("decoded (fixed-width values alone)", fixed_width)):
        if size > config.crawl_max_uncompressed_bytes:
            raise _too_large(url, config, f"{size} bytes {what}, by its metadata; refused before reading it")


def _batch_rows(metadata: pq.FileMetaData) -> int:
    """Rows per batch so that no column has more than ``_BATCH_VALUES`` values in one batch (nested lists)."""
    values: dict[int, int] = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            values[index] = values.get(index, 0) + row_group.column(index).num_values
    most = max(values.values(), default=0)
    if most <= metadata.num_rows or metadata.num_rows == 0:
        return _BATCH_VALUES
    return max(1, _BATCH_VALUES * metadata.num_rows // most)


def _decoded_bytes(array: pa.Array) -> int:
    """The bytes ``array`` takes once dictionaries are expanded, computed without expanding them."""
    if pa.types.is_dictionary(array.type):
        lengths = pc.binary_length(array.dictionary)
        expanded = pc.sum(pc.take(lengths, array.indices)).as_py() or 0
        return int(expanded) + array.indices.nbytes
    if isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):  # maps are lists too
        return array.nbytes - array.values.nbytes + _decoded_bytes(array.flatten())
    if isinstance(array, pa.StructArray):
        return sum(_decoded_bytes(child) for child in array.flatten())
    return array.nbytes


def _too_large(url: str, config: PipelineConfig, found: str) -> CrawlError:
    return CrawlError(
        f"{url}: the Parquet file is {found}, more than crawl_max_uncompressed_bytes="
        f"{config.crawl_max_uncompressed_bytes}. Raise crawl_max_uncompressed_bytes if this size is expected"
    )
