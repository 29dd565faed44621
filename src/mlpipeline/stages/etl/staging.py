"""The staging file between the passes: pass 1's clean rows, typed, as an uncompressed Arrow IPC file (one record
batch per chunk). Arrow's own layout: writing it is a copy, and reading it back is memory-mapped, without decoding;
the map is let go once a batch read is dropped, so the data read does not stay in the process's memory."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc


class StagingWriter:
    """Appends a chunk's clean rows (a table of the file's schema) as a record batch."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self._writer = ipc.new_file(str(path), schema)

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


class Staging:
    """Reads the staging file a batch (or some of its columns) at a time, by row group number as
    ``pyarrow.parquet.ParquetFile`` does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            self._rows = [reader.get_batch(index).num_rows for index in range(reader.num_record_batches)]
            self.schema = reader.schema

    @property
    def num_row_groups(self) -> int:
        return len(self._rows)

    def rows(self, group: int) -> int:
        return self._rows[group]

    def read_row_group(self, group: int, columns: list[str] | None = None) -> pa.Table:
        with pa.memory_map(str(self.path)) as source:
            batch = ipc.open_file(source).get_batch(group)
        table = pa.Table.from_batches([batch])
        return table.select(columns) if columns is not None else table
