"""Versioned record and manifest schemas, kept as data files beside this module.

``record.v<N>.arrow.json`` is the Arrow schema of an archived record (Parquet files are
written with it); ``record.v<N>.schema.json`` is the JSON Schema of one JSONL line;
``manifest.v<N>.schema.json`` describes a run manifest; ``index.v<N>.arrow.json`` is the
Arrow schema of the restore index's entries (task id -> where its record sits).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

RECORD_VERSION = 2  # v2 adds raw_date_done and raw_key; v1 files read them as null
MANIFEST_VERSION = 2  # v2 adds chain and supersedes (archive/chain.py); v1 manifests read as they are
INDEX_VERSION = 1


def _load(name: str) -> dict[str, Any]:
    try:  # beside this module (importlib.resources would cost a CLI restore's start-up ~10 ms)
        text = (Path(__file__).parent / name).read_text(encoding="utf-8")
    except OSError:  # installed where files are not files (a zip)
        from importlib import resources

        text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def record_fields(version: int = RECORD_VERSION, name: str = "record") -> tuple[dict[str, Any], ...]:
    """The fields of ``name`` (record or index), in column order: name, type, nullable, doc."""
    return tuple(_load(f"{name}.v{version}.arrow.json")["fields"])


def field_names(version: int = RECORD_VERSION) -> tuple[str, ...]:
    return tuple(f["name"] for f in record_fields(version))


def json_schema(name: str = "record", version: int | None = None) -> dict[str, Any]:
    """A JSON Schema: ``record`` (one JSONL line) or ``manifest``; the current version by default."""
    current = {"record": RECORD_VERSION, "manifest": MANIFEST_VERSION}
    return _load(f"{name}.v{version or current[name]}.schema.json")


def _arrow_type(spec: str) -> pa.DataType:
    import pyarrow as pa

    simple = {"string": pa.string(), "binary": pa.binary(), "int32": pa.int32(), "int64": pa.int64()}
    if spec in simple:
        return simple[spec]
    if spec == "timestamp[us, tz=UTC]":
        return pa.timestamp("us", tz="UTC")
    raise ValueError(f"unknown type {spec!r} in a schema file")


@cache
def arrow_schema(version: int = RECORD_VERSION, name: str = "record") -> pa.Schema:
    """The Arrow schema of ``name``: a record, or an index entry (imports pyarrow)."""
    import pyarrow as pa

    fields = [
        pa.field(f["name"], _arrow_type(f["type"]), nullable=f["nullable"], metadata={"doc": f["doc"]})
        for f in record_fields(version, name)
    ]
    return pa.schema(fields, metadata={f"celery_archive.{name}_version": str(version)})


def conform(table: pa.Table) -> pa.Table:
    """A record table read from a file of any record version, with the current schema: columns
    a file of an earlier version lacks come back null (versions only ever add columns)."""
    import pyarrow as pa

    schema = arrow_schema()
    have = set(table.column_names)
    n = table.num_rows
    # cast only what differs: a cast loads pyarrow.compute, which a restore need not pay for
    arrays = [(table.column(f.name) if table.column(f.name).type == f.type else table.column(f.name).cast(f.type))
              if f.name in have else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
