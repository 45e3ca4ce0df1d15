"""Writers: records to Parquet (pyarrow, built from columns) or JSONL (orjson), Hive-style
``data/date=YYYY-MM-DD/`` partitions, each file rolled at a size limit and put to the sink
only when complete."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from celery_archive.pipeline.records import Columns, row_count
from celery_archive.schemas import arrow_schema, field_names, record_fields
from celery_archive.sinks import Sink

FORMATS = ("parquet", "jsonl")
COMPRESSIONS = {"parquet": ("zstd", "snappy", "gzip", "none"), "jsonl": ("none", "zstd", "gzip")}
DEFAULT_COMPRESSION = {"parquet": "zstd", "jsonl": "none"}
_MAX_OPEN = 4  # open partitions at once; results arrive sorted by date_done, so one is usual


@dataclass(frozen=True)
class FileEntry:
    """One committed data file, as its manifest lists it."""

    key: str
    format: str
    compression: str | None
    rows: int
    bytes: int
    sha256: str
    ids_sha256: str
    min_date_done: str
    max_date_done: str
    kinds: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ids_digest(kinds: Iterable[str], task_ids: Iterable[str]) -> str:
    """sha256 over the sorted ``kind:task_id`` lines: the identity of a file's contents."""
    lines = sorted(f"{k}:{t}" for k, t in zip(kinds, task_ids))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def extension(fmt: str, compression: str | None) -> str:
    if fmt == "parquet":
        return "parquet"
    return {"zstd": "jsonl.zst", "gzip": "jsonl.gz"}.get(compression or "none", "jsonl")


def iso(ts: dt.datetime) -> str:
    return ts.replace(tzinfo=dt.timezone.utc).isoformat().replace("+00:00", "Z")


class _Stream(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> object: ...
    def close(self) -> object: ...


class _FileWriter(Protocol):
    def write(self, cols: Columns, start: int, stop: int) -> None: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class _ParquetFile:
    def __init__(self, path: Path, compression: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = arrow_schema()
        self._out = pa.OSFile(str(path), "wb")
        self._writer = pq.ParquetWriter(self._out, self._schema, compression=compression)

    def write(self, cols: Columns, start: int, stop: int) -> None:
        pa = self._pa
        arrays = [pa.array(cols[f.name][start:stop], type=f.type) for f in self._schema]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def size(self) -> int:
        return int(self._out.tell())

    def close(self) -> None:
        self._writer.close()
        self._out.close()


class _JsonlFile:
    _binary = tuple(f["name"] for f in record_fields() if f["type"] == "binary")

    def __init__(self, path: Path, compression: str) -> None:
        self._raw = open(path, "wb")
        self._out: _Stream
        if compression == "zstd":
            import zstandard

            self._out = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        elif compression == "gzip":
            self._out = gzip.GzipFile(fileobj=self._raw, mode="wb")
        else:
            self._out = self._raw

    def write(self, cols: Columns, start: int, stop: int) -> None:
        names = field_names()
        columns = []
        for name in names:
            values = cols[name][start:stop]
            if name in self._binary:
                values = [None if v is None else base64.b64encode(v).decode("ascii") for v in values]
            columns.append(values)
        opt = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
        self._out.write(b"".join(orjson.dumps(dict(zip(names, row)), option=opt) + b"\n" for row in zip(*columns)))
        if self._out is not self._raw:
            self._out.flush()  # end the compressed block, so size() sees what this batch added

    def size(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()


@dataclass
class _OpenFile:
    key: str
    path: Path
    writer: _FileWriter
    rows: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)
    min_dd: dt.datetime | None = None
    max_dd: dt.datetime | None = None


class ArchiveWriter:
    """Routes record batches to per-day files, rolls them at ``max_file_bytes`` and puts
    each finished file to the sink. ``close()`` returns the committed files' entries."""

    def __init__(self, sink: Sink, run_id: str, fmt: str, compression: str | None,
                 max_file_bytes: int, spool_dir: Path) -> None:
        self.sink, self.run_id, self.fmt = sink, run_id, fmt
        self.compression = compression or DEFAULT_COMPRESSION[fmt]
        self.max_file_bytes, self.spool_dir = max_file_bytes, spool_dir
        self.entries: list[FileEntry] = []
        self._open: dict[dt.date, _OpenFile] = {}
        self._seq = 0

    def write(self, cols: Columns) -> None:
        dates = cols["date_done"]
        n, start = row_count(cols), 0
        while start < n:
            day, stop = dates[start].date(), start + 1
            while stop < n and dates[stop].date() == day:
                stop += 1
            self._append(day, cols, start, stop)
            start = stop

    def _append(self, day: dt.date, cols: Columns, start: int, stop: int) -> None:
        f = self._open.get(day) or self._new_file(day)
        f.writer.write(cols, start, stop)
        f.rows += stop - start
        kinds, ids, dds = cols["kind"][start:stop], cols["task_id"][start:stop], cols["date_done"][start:stop]
        f.kinds.update(kinds)
        f.ids.extend(f"{k}:{t}" for k, t in zip(kinds, ids))
        lo, hi = min(dds), max(dds)
        f.min_dd = lo if f.min_dd is None else min(f.min_dd, lo)
        f.max_dd = hi if f.max_dd is None else max(f.max_dd, hi)
        if f.writer.size() >= self.max_file_bytes:
            self._finish(day)

    def _new_file(self, day: dt.date) -> _OpenFile:
        if len(self._open) >= _MAX_OPEN:
            self._finish(next(iter(self._open)))
        self._seq += 1
        name = f"{self.run_id}-{self._seq:05d}.{extension(self.fmt, self.compression)}"
        path = self.spool_dir / name
        writer: _FileWriter = _ParquetFile(path, self.compression) if self.fmt == "parquet" else _JsonlFile(path, self.compression)
        f = self._open[day] = _OpenFile(f"data/date={day.isoformat()}/{name}", path, writer)
        return f

    def _finish(self, day: dt.date) -> None:
        f = self._open.pop(day)
        f.writer.close()
        try:
            info = self.sink.put(f.key, f.path)
            f.ids.sort()
            entry = FileEntry(
                key=f.key, format=self.fmt, compression=None if self.compression == "none" else self.compression,
                rows=f.rows, bytes=info.size, sha256=file_sha256(f.path),
                ids_sha256=hashlib.sha256("\n".join(f.ids).encode()).hexdigest(),
                min_date_done=iso(f.min_dd), max_date_done=iso(f.max_dd), kinds=dict(f.kinds),  # type: ignore[arg-type]
            )
        finally:
            f.path.unlink(missing_ok=True)
        self.entries.append(entry)

    def close(self) -> list[FileEntry]:
        for day in list(self._open):
            self._finish(day)
        return self.entries

    def abort(self) -> None:
        """Drop open files without putting them (the run failed)."""
        for f in self._open.values():
            try:
                f.writer.close()
            except Exception:  # noqa: BLE001 - best effort on the way out of a failure
                pass
            f.path.unlink(missing_ok=True)
        self._open.clear()
