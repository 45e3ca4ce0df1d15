"""Archived records as columns: one list per schema field, never a dict per row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from celery_archive.pipeline.decode import SERIALIZERS, decode_column
from celery_archive.schemas import field_names

Columns = dict[str, list[Any]]
"""Record columns keyed by schema field name; every list has the same length. String fields
may hold UTF-8 bytes rather than str (the decoded JSON copies always do)."""


def row_count(cols: Columns) -> int:
    return len(cols["task_id"])


def build_records(
    kind: str,
    raw: Mapping[str, Sequence[Any]],
    n: int,
    *,
    serializer: str,
    storage_format: str,
    source: str,
    source_table: str,
    run_id: str,
    archived_at: dt.datetime,
) -> Columns:
    """Records from a batch of stored columns (``raw``: column name -> values)."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"unknown serializer {serializer!r}")
    nulls: list[Any] = [None] * n

    def col(name: str) -> list[Any]:
        return list(raw[name]) if name in raw else nulls

    results = col("result")
    texts: dict[str, list[bytes | None]] = {}
    errors: list[list[str | None]] = []
    compression = nulls
    for field in ("result", "args", "kwargs", "children"):
        if field in raw:
            texts[field], errs, comps = decode_column(col(field), serializer, field)
            errors.append(errs)
            if field == "result":
                compression = comps
    if any(any(e) for e in errors):
        decode_error: list[Any] = ["; ".join(e for e in row if e) or None for row in zip(*errors)]
    else:
        decode_error = nulls
    if storage_format == "celery-db-5.7" and serializer != "pickle":
        # a pickle in a 5.7 table was written by Celery <= 5.6 before the table was migrated
        formats = ["celery-db-5.6" if r is not None and r[:1] == b"\x80" else storage_format for r in results]
    else:
        formats = [storage_format] * n
    ctype, cenc = SERIALIZERS[serializer]
    cols: Columns = {
        "task_id": col("task_id"),
        "kind": [kind] * n,
        "status": col("status"),
        "date_done": col("date_done"),
        "name": col("name"),
        "args": texts.get("args", nulls),
        "kwargs": texts.get("kwargs", nulls),
        "worker": col("worker"),
        "retries": col("retries"),
        "queue": col("queue"),
        "children": texts.get("children", nulls),
        "traceback": col("traceback"),
        "group_id": col("group_id"),
        "parent_id": col("parent_id"),
        "result": texts.get("result", nulls),
        "decode_error": decode_error,
        "raw_result": results,
        "raw_args": col("args"),
        "raw_kwargs": col("kwargs"),
        "raw_children": col("children"),
        "raw_stamps": col("stamps"),
        "raw_value": col("value"),
        "content_type": [ctype] * n,
        "content_encoding": [cenc] * n,
        "compression": compression,
        "storage_format": formats,
        "source": [source] * n,
        "source_table": [source_table] * n,
        "source_id": col("id"),
        "ttl_ms": col("ttl_ms"),
        "rule": col("rule"),
        "run_id": [run_id] * n,
        "archived_at": [archived_at] * n,
    }
    assert tuple(cols) == field_names(), "record columns out of step with the schema"
    return cols
