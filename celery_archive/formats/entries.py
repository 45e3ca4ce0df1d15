"""What every format shares: the restore index entries' schema, and the ids digest that ties
a file's contents to what was extracted into it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery_archive.schemas import INDEX_VERSION, arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa


def index_schema() -> pa.Schema:
    return arrow_schema(INDEX_VERSION, "index")


def entries(cols: dict[str, Any], n: int | None = None) -> pa.Table:
    """Index entries from columns: arrays, lists or (given ``n``) one value for all ``n`` rows."""
    import pyarrow as pa

    schema = index_schema()

    def column(value: Any, type_: pa.DataType) -> pa.Array:
        if n is not None and not isinstance(value, (list, pa.Array, pa.ChunkedArray)):
            return pa.repeat(pa.scalar(value, type_), n)
        return value.cast(type_) if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value, type_)

    return pa.table({f.name: column(cols[f.name], f.type) for f in schema}, schema=schema)


def naive(table: pa.Table) -> pa.Table:
    """Timestamps with a zone as the same instants in naive UTC (how the pipeline compares them).
    A view of the same values (they are UTC either way), not a cast: that loads pyarrow.compute,
    and Python datetimes with a zone load zoneinfo (~60 and ~5 ms of a CLI restore)."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            to = pa.timestamp(field.type.unit)
            table = table.set_column(i, field.name, pa.chunked_array([c.view(to) for c in table.column(i).chunks], to))
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
    import hashlib  # not for a lookup

    h = hashlib.sha256()
    feed_ids(h, kind, task_id)
    return h.hexdigest()
