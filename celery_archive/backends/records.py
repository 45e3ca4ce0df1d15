"""Archived records as Arrow tables with the record schema: built column by column from the
source's columns, never a dict (or a Python object) per row where it can be helped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from celery_archive.backends import StorageFormat
from celery_archive.backends.codec import SERIALIZERS, decode_each, json_text
from celery_archive.schemas import arrow_schema

RAW_TYPES: dict[str, pa.DataType] = {
    "id": pa.int64(), "task_id": pa.string(), "taskset_id": pa.string(), "status": pa.string(),
    "result": pa.binary(), "date_done": pa.timestamp("us"), "traceback": pa.string(), "children": pa.binary(),
    "name": pa.string(), "args": pa.binary(), "kwargs": pa.binary(), "worker": pa.string(), "retries": pa.int32(),
    "queue": pa.string(), "stamps": pa.binary(), "raw_date_done": pa.string(),
}
"""Arrow types of a stored Celery row's columns (date_done as a naive UTC instant, raw_date_done
as stored)."""

RawColumns = Mapping[str, "pa.Array | Sequence[Any]"]


def utc_naive(value: Any) -> Any:
    """A stored date (ISO 8601 text, or a datetime) as a naive UTC datetime; other values
    (None) as they are."""
    if not isinstance(value, str):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if isinstance(value, dt.datetime) and value.tzinfo else value
    if value.endswith("+00:00"):  # what Celery writes with enable_utc and no timezone
        return dt.datetime.fromisoformat(value[:-6])
    ts = dt.datetime.fromisoformat(value)
    return ts.astimezone(dt.timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts


def one_array(values: pa.Array | pa.ChunkedArray | Sequence[Any], type_: pa.DataType | None = None) -> pa.Array:
    """A page's column (Arrow arrays from ADBC, a list from a DB-API driver) as one Arrow array
    (of ``type_`` where given; a list's type inferred otherwise)."""
    if isinstance(values, pa.ChunkedArray):  # one chunk is the rule: then no copy
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if type_ is None or values.type == type_ else values.cast(type_)
    return pa.array(values, type_)


def as_array(name: str, values: pa.Array | pa.ChunkedArray | Sequence[Any]) -> pa.Array:
    """A stored column as an Arrow array of its RAW_TYPES type."""
    return one_array(values, RAW_TYPES[name])


def malformed(page: Mapping[str, Any], types: Mapping[str, pa.DataType] = RAW_TYPES) -> dict[int, str]:
    """Rows of a page of stored columns (the driver's values) holding a value of another type
    than its column's (``types``): a number where Celery writes bytes, bytes where it writes
    text (SQLite stores anything anywhere), a retries count beyond int32. By index: what is wrong."""
    bad: dict[int, str] = {}
    for name, values in page.items():
        target = types.get(name)
        if target is None or isinstance(values, (pa.Array, pa.ChunkedArray)) or name == "date_done":
            continue
        allowed = _PY_TYPES.get(target.id)
        if allowed is None:
            continue
        if set(map(type, values)) <= allowed:
            if not pa.types.is_integer(target):
                continue
            try:
                pa.array(values, target)  # in the column's range
                continue
            except (pa.ArrowException, OverflowError):
                pass
        for i, v in enumerate(values):
            if type(v) not in allowed:
                bad.setdefault(i, f"{name} is {type(v).__name__} {v!r:.40}")
            elif pa.types.is_integer(target) and v is not None and not _fits(v, target):
                bad.setdefault(i, f"{name} is {v!r:.40}, beyond {target}")
    return bad


_PY_TYPES = {pa.string().id: {str, type(None)}, pa.binary().id: {bytes, type(None)},
             pa.int64().id: {int, type(None)}, pa.int32().id: {int, type(None)}}


def _fits(value: int, target: pa.DataType) -> bool:
    try:
        pa.array([value], target)
    except (pa.ArrowException, OverflowError):
        return False
    return True


def _decode(arr: pa.Array, serializer: str, field: str) -> tuple[pa.Array, list[str | None] | None, list[str | None] | None]:
    """(JSON text column, errors or None, compression types or None) for a stored column."""
    if serializer == "json" and (text := json_text(arr)) is not None:
        return text, None, None  # the stored text is the JSON copy
    texts, errors, compressions = decode_each(arr.to_pylist(), serializer, field)
    return pa.array(texts, pa.string()), errors, compressions


def build_records(
    kind: str,
    raw: RawColumns,
    n: int,
    *,
    serializer: str,
    storage_format: str,
    source: str,
    source_table: str,
    run_id: str,
    archived_at: dt.datetime,
) -> pa.Table:
    """Records from a batch of stored columns (``raw``: column name -> values)."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"unknown serializer {serializer!r}")
    cols: dict[str, pa.Array] = {name: as_array(name, values) for name, values in raw.items()}
    errors: list[list[str | None]] = []
    texts: dict[str, pa.Array] = {}
    compression: list[str | None] | None = None
    for field in ("result", "args", "kwargs", "children"):
        if field in cols:
            texts[field], errs, comps = _decode(cols[field], serializer, field)
            if errs is not None and any(errs):
                errors.append(errs)
            if field == "result" and comps is not None and any(comps):
                compression = comps
    decode_error = ["; ".join(e for e in row if e) or None for row in zip(*errors)] if errors else None
    formats: Any = storage_format
    if storage_format == StorageFormat.CELERY_DB_57 and serializer != "pickle" and "result" in cols:
        # a pickle in a 5.7 table was written by Celery <= 5.6 before the table was migrated
        legacy = pc.starts_with(cols["result"], pattern=b"\x80")
        if pc.any(legacy).as_py():
            formats = pc.if_else(legacy.fill_null(False), StorageFormat.CELERY_DB_56.value, str(storage_format))
    ctype, cenc = SERIALIZERS[serializer]
    given: dict[str, Any] = {
        **{k: cols[k] for k in ("task_id", "status", "name", "worker", "retries", "queue", "traceback") if k in cols},
        **texts,
        "kind": kind, "decode_error": decode_error, "compression": compression, "storage_format": formats,
        "content_type": ctype, "content_encoding": cenc, "source": source, "source_table": source_table,
        "run_id": run_id, "archived_at": archived_at,
        "raw_result": cols.get("result"), "raw_args": cols.get("args"), "raw_kwargs": cols.get("kwargs"),
        "raw_children": cols.get("children"), "raw_stamps": cols.get("stamps"), "source_id": cols.get("id"),
        "raw_date_done": cols.get("raw_date_done"),
    }
    if "date_done" in cols:
        given["date_done"] = cols["date_done"]
    return assemble(given, n)


def assemble(given: Mapping[str, Any], n: int) -> pa.Table:
    """A record table of ``n`` rows: each schema field from ``given`` as an Arrow array, a list,
    or one value for every row; a field not given (or None) is null."""
    schema = arrow_schema()
    arrays = []
    for f in schema:
        value = given.get(f.name)
        if value is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(value, pa.Array):
            arrays.append(value if value.type == f.type else value.cast(f.type))
        elif isinstance(value, list):
            arrays.append(pa.array(value, f.type))
        else:  # one value for the whole batch
            arrays.append(pa.repeat(pa.scalar(value, f.type), n))
    return pa.Table.from_arrays(arrays, schema=schema)
