"""Reading archive data files back, in column batches (verify, purge, later restore)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from celery_archive.schemas import record_fields

_BATCH = 50_000


def _open_text(path: Path, compression: str | None) -> BinaryIO:
    raw = open(path, "rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _jsonl_value(name: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "binary":
        return base64.b64decode(value)
    if kind.startswith("timestamp"):
        return dt.datetime.fromisoformat(value)
    return value


def read_columns(path: Path, fmt: str, compression: str | None, columns: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    """Batches of the named columns; timestamps come back as aware UTC datetimes."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=_BATCH, columns=list(columns)):
            yield batch.to_pydict()
        return
    types = {f["name"]: f["type"] for f in record_fields()}
    with _open_text(path, compression) as f:
        out: dict[str, list[Any]] = {c: [] for c in columns}
        for line in f:
            if not line.strip():
                continue
            row = orjson.loads(line)
            for c in columns:
                out[c].append(_jsonl_value(c, types[c], row[c]))
            if len(out[columns[0]]) >= _BATCH:
                yield out
                out = {c: [] for c in columns}
        if out[columns[0]]:
            yield out
