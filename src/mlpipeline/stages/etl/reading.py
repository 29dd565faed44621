"""Reading the raw snapshot as chunks of Arrow text columns: Arrow's CSV reader when it reads the file as pandas
would, else the crawl stage's reference readers."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlpipeline.stages.crawl import iter_raw, rechunk
from mlpipeline.stages.etl.result import EtlError

# pandas.read_csv's default NA strings: the Arrow CSV reader must see the same cells as missing.
_PANDAS_NA_STRINGS = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "?",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]


_SHOWN_NAMES = 20
_SHOWN_NAME_CHARS = 100


def header_names(path: str, fmt: str) -> list[str] | None:
    """The column names as the file spells them, before any reader renames duplicates; None if not knowable."""
    if fmt == "parquet":
        try:
            return pq.read_schema(path).names
        except (OSError, pa.ArrowException):
            return None  # not readable as Parquet: the readers say so
    if fmt != "csv":
        return None  # JSON records are objects: a key occurs once per record
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
            # The first non-blank record, as pandas takes it (its default skips blank lines).
            return next((row for row in csv.reader(handle) if row), [])
    except csv.Error:
        return None  # e.g. a header cell over the csv module's field limit: the readers decide


def refuse_duplicate_columns(path: str, fmt: str) -> None:
    """A header that names a column twice is ambiguous (pandas renames the second ``a.1``, Arrow keeps both):
    refuse it, naming the duplicates. Blank names are left to the readers (pandas calls them ``Unnamed: <n>``)."""
    names = header_names(path, fmt) or []
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1 and name.strip())
    if duplicates:
        shown = [name[:_SHOWN_NAME_CHARS] for name in duplicates[:_SHOWN_NAMES]]
        more = f" and {len(duplicates) - _SHOWN_NAMES} more" if len(duplicates) > _SHOWN_NAMES else ""
        raise EtlError(
            f"the raw snapshot {path} names these columns more than once: {shown}{more}; which one is meant is"
            " ambiguous. Fix the source's header"
        )


class ReadError(Exception):
    """The raw snapshot could not be read (wraps the reader's own exception)."""


class FastReaderGaveUp(Exception):
    """The Arrow CSV reader cannot read this file the way pandas does; read it with pandas instead."""


def arrow_csv_chunks(path: str, chunk_rows: int) -> Iterator[pa.Table]:
    """The CSV as ``read_csv(dtype=str)`` sees it, parsed by Arrow's C++ reader (several times faster)."""
    try:
        with pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 20)) as probe:
            names = probe.schema.names
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FastReaderGaveUp(str(exc)) from exc
    if len(set(names)) != len(names) or "" in names:
        raise FastReaderGaveUp("duplicate or blank column names (pandas renames them)")
    options = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        null_values=_PANDAS_NA_STRINGS,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    parse = pa_csv.ParseOptions(newlines_in_values=True)
    # Small blocks: the threaded reader parses blocks ahead of the consumer, and with 8 MiB blocks those held
    # ~400 MiB on a 10 M-row file; 1 MiB blocks parse as fast. (A row longer than a block makes the reader give up:
    # pandas reads that file.)
    read = pa_csv.ReadOptions(block_size=1 << 20)

    def batches() -> Iterator[pa.Table]:
        try:
            with pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=options) as reader:
                for batch in reader:
                    yield pa.Table.from_batches([batch])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # ragged rows, bad quoting, ...
            raise FastReaderGaveUp(str(exc)) from exc

    empty = True
    for table in rechunk(batches(), chunk_rows):
        empty = False
        yield table
    if empty:  # a header without rows: the columns are still checked
        yield pa.table({name: pa.array([], pa.string()) for name in names})


def pandas_chunks(path: str, fmt: str, chunk_rows: int) -> Iterator[pa.Table]:
    """The snapshot through :func:`mlpipeline.stages.crawl.iter_raw` (the reference reader), as Arrow text columns."""
    columns: list[str] | None = None
    try:
        for frame in iter_raw(path, fmt, chunk_rows):
            if columns is None:
                columns = [str(name) for name in frame.columns]
            frame = frame.reindex(columns=columns)
            yield pa.table(
                {
                    name: pa.array(frame[name].to_numpy(dtype=object), type=pa.string(), from_pandas=True)
                    for name in columns
                }
            )
    except Exception as exc:
        raise ReadError(str(exc)) from exc


def read_ahead(chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``chunks``, the next one read on a thread while the caller works on the current one (Arrow's CSV parser
    releases the GIL); the reader's exceptions are raised here, in order."""
    with ThreadPoolExecutor(1, thread_name_prefix="etl-read") as reader:
        upcoming = reader.submit(next, chunks, None)
        while (chunk := upcoming.result()) is not None:
            upcoming = reader.submit(next, chunks, None)
            yield chunk
