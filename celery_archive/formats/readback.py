"""Reading archive data files back (verify, purge, later restore), and the ids digest that
ties a file's contents to what was extracted into it."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from celery_archive.schemas import arrow_schema, record_fields

if TYPE_CHECKING:
    import pyarrow as pa

_BATCH = 50_000


def _open_text(path: Path, compression: str | None) -> BinaryIO:
    raw = open(path, "rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True))
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _jsonl_value(name: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "binary":
        return base64.b64decode(value)
    if kind.startswith("timestamp"):
        return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def read_columns(path: Path, fmt: str, compression: str | None, columns: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    """Batches of the named columns; timestamps come back as naive UTC datetimes."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        present = [c for c in columns if c in pf.schema_arrow.names]  # a column of a later version: null
        for batch in pf.iter_batches(batch_size=_BATCH, columns=present):
            arrays: dict[str, list[Any]] = {c: [None] * batch.num_rows for c in columns}
            for name, col in zip(batch.schema.names, batch.columns):
                if pa.types.is_timestamp(col.type) and col.type.tz is not None:
                    col = col.cast(pa.timestamp(col.type.unit))  # same instants, as naive UTC
                arrays[name] = col.to_pylist()
            yield arrays
        return
    types = {f["name"]: f["type"] for f in record_fields()}
    with _open_text(path, compression) as f:
        out: dict[str, list[Any]] = {c: [] for c in columns}
        for line in f:
            if not line.strip():
                continue
            row = orjson.loads(line)
            for c in columns:
                out[c].append(_jsonl_value(c, types[c], row.get(c)))  # absent in earlier versions: null
            if len(out[columns[0]]) >= _BATCH:
                yield out
                out = {c: [] for c in columns}
        if out[columns[0]]:
            yield out


def first_record(path: Path, compression: str | None) -> dict[str, Any]:
    """The first record of a JSONL data file, as parsed JSON."""
    with _open_text(path, compression) as f:
        for line in f:
            if line.strip():
                row: dict[str, Any] = orjson.loads(line)
                return row
    return {}


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Records parsed from JSONL lines as a table with the record schema."""
    import pyarrow as pa

    schema = arrow_schema()
    types = {f["name"]: f["type"] for f in record_fields()}
    return pa.table({f.name: pa.array([_jsonl_value(f.name, types[f.name], r.get(f.name)) for r in rows], f.type)
                     for f in schema}, schema=schema)


def read_tables(path: Path, fmt: str, compression: str | None, columns: Sequence[str], batch_rows: int = _BATCH) -> Iterator[pa.Table]:
    """The named columns of one data file in tables of at most ``batch_rows`` rows (memory
    bounded by that, not by the file); timestamps become naive UTC."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        schema = arrow_schema()
        pf = pq.ParquetFile(path)
        present = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
            t = pa.Table.from_batches([batch])
            # a column of a later record version than the file's comes back null
            t = pa.table({c: t.column(c) if c in present else pa.nulls(t.num_rows, schema.field(c).type) for c in columns})
            yield _naive(t)
        return
    schema = arrow_schema()
    for cols in read_columns(path, fmt, compression, columns):
        yield _naive(pa.table({c: pa.array(v, schema.field(c).type) for c, v in cols.items()}))


def _naive(table: pa.Table) -> pa.Table:
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(i, field.name, table.column(i).cast(pa.timestamp(field.type.unit)))
    return table


def feed_ids(h: Any, kind: pa.Array | pa.ChunkedArray, task_id: pa.Array | pa.ChunkedArray) -> None:
    """Add ``kind:task_id`` lines (newline-terminated, in order) to the sha256 ``h``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = pc.binary_join_element_wise(kind, ":", task_id, "\n", "")
    for chunk in lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]:
        if len(chunk):
            _validity, offsets, data = chunk.buffers()
            bounds = memoryview(offsets).cast("q" if pa.types.is_large_string(chunk.type) else "i")
            start, end = bounds[chunk.offset], bounds[chunk.offset + len(chunk)]
            h.update(memoryview(data)[start:end])  # the lines, back to back


def ids_digest(kind: pa.Array | pa.ChunkedArray, task_id: pa.Array | pa.ChunkedArray) -> str:
    """sha256 of the ``kind:task_id`` lines, newline-terminated, in file order: which results a
    file holds, in the order they were extracted into it."""
    import hashlib

    h = hashlib.sha256()
    feed_ids(h, kind, task_id)
    return h.hexdigest()
