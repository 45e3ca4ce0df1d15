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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from celery_archive.archive.layout import data_key
from celery_archive.archive.manifest import FileEntry, Format
from celery_archive.errors import disk_error
from celery_archive.formats import DEFAULT_COMPRESSION
from celery_archive.formats.readback import feed_ids
from celery_archive.schemas import arrow_schema, record_fields
from celery_archive.sinks import Sink
from celery_archive.times import iso

if TYPE_CHECKING:
    import pyarrow as pa

FRAME_ROWS = 1000  # lines per zstd frame / gzip member of a compressed JSONL file
_MAX_OPEN = 4  # open partitions at once (results arrive sorted by date_done, so one is usual)
# dictionary-encode only low-cardinality columns, and keep statistics where queries and the
# restore index use them: both cost time and space on ids and payloads for nothing
_DICTIONARY = ["kind", "status", "name", "worker", "queue", "content_type", "content_encoding", "compression",
               "storage_format", "source", "source_table", "rule", "run_id"]
_STATISTICS = ["task_id", "kind", "status", "date_done", "name", "worker", "queue", "archived_at"]


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


class _FileWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class _ParquetFile:
    """Row groups are encoded and compressed on a writer thread (pyarrow releases the GIL),
    while the next batch is converted to Arrow; at most one row group is in flight."""

    def __init__(self, path: Path, compression: str, pool: ThreadPoolExecutor) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pool = pool
        self._schema = arrow_schema()
        # buffered: the writer asks where it is (tell) and writes each page, a system call each
        self._out = pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), buffer_size=1 << 20)
        self._writer = pq.ParquetWriter(self._out, self._schema, compression=compression,
                                        use_dictionary=_DICTIONARY, write_statistics=_STATISTICS)
        self._pending: Future[None] | None = None
        self._queued = 0  # bytes of Arrow data handed to the writer thread, not yet on disk

    def write(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._pool.submit(self._writer.write_table, table)
        self._queued = table.nbytes

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending, self._queued = None, 0

    def size(self) -> int:
        # the bytes on disk, plus an upper bound for the row group still being written
        return int(self._out.tell()) + self._queued

    def close(self) -> None:
        self._wait()
        self._writer.close()
        self._out.close()


class _JsonlFile:
    """One JSON object a line. Compressed files are a series of independent zstd frames or
    gzip members of at most ``FRAME_ROWS`` lines each (a valid .zst / .gz file for any
    reader), so that restore decompresses one small frame, not the file."""

    _binary = tuple(f["name"] for f in record_fields() if f["type"] == "binary")

    def __init__(self, path: Path, compression: str) -> None:
        self._out = open(path, "wb")
        self._compress: Callable[[bytes], bytes] | None = None
        if compression == "zstd":
            import zstandard

            self._compress = zstandard.ZstdCompressor(level=3, write_content_size=True).compress
        elif compression == "gzip":
            self._compress = lambda data: gzip.compress(data, compresslevel=6, mtime=0)

    def write(self, table: pa.Table) -> None:
        columns = []
        for name in table.column_names:
            values = table.column(name).to_pylist()
            if name in self._binary:
                values = [None if v is None else base64.b64encode(v).decode("ascii") for v in values]
            columns.append(values)
        opt = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
        names = table.column_names
        lines = [orjson.dumps(dict(zip(names, row)), option=opt) + b"\n" for row in zip(*columns)]
        if self._compress is None:
            self._out.write(b"".join(lines))
            return
        for i in range(0, len(lines), FRAME_ROWS):
            self._out.write(self._compress(b"".join(lines[i:i + FRAME_ROWS])))

    def size(self) -> int:
        return self._out.tell()

    def close(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()


@dataclass
class _OpenFile:
    key: str
    path: Path
    writer: _FileWriter
    rows: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    ids_hash: Any = field(default_factory=hashlib.sha256)  # over kind:task_id lines, fed as rows go in
    min_dd: dt.datetime | None = None
    max_dd: dt.datetime | None = None


class ArchiveWriter:
    """Routes record batches to per-day files, rolls them at ``max_file_bytes`` and puts
    each finished file to the sink. ``close()`` returns the committed files' entries."""

    def __init__(self, sink: Sink, run_id: str, fmt: str, compression: str | None,
                 max_file_bytes: int, spool_dir: Path, on_put: Callable[[FileEntry], None] | None = None) -> None:
        self.sink, self.run_id, self.fmt, self.on_put = sink, run_id, fmt, on_put
        self.compression = compression or DEFAULT_COMPRESSION[fmt]
        self.max_file_bytes, self.spool_dir = max_file_bytes, spool_dir
        self.entries: list[FileEntry] = []
        self._open: dict[dt.date, _OpenFile] = {}
        self._seq = 0
        self._kind: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-archive-write")
        self._finishing: list[Future[FileEntry]] = []
        self._in_flight: dict[str, _OpenFile] = {}  # queued for completion, not done yet

    def write(self, table: pa.Table) -> None:
        try:
            self._write(table)
        except OSError as exc:
            raise disk_error("staging data files in", self.spool_dir, exc) from exc

    def _write(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        if not table.num_rows:
            return
        kind = table.column("kind")[0].as_py()
        if kind != self._kind:
            # a new kind (tasks, then groups): finish the open files, so that each kind's files
            # follow extraction order and purge can treat consecutive files as one key range
            for day in list(self._open):
                self._finish(day)
            self._kind = kind
        runs = pc.run_end_encode(pc.cast(table.column("date_done"), "date32")).combine_chunks()
        start = 0
        for end, day in zip(runs.run_ends.to_pylist(), runs.values.to_pylist()):
            self._append(day, kind, table.slice(start, end - start))
            start = end

    def _append(self, day: dt.date, kind: str, table: pa.Table) -> None:
        import pyarrow.compute as pc

        for earlier in [d for d in self._open if d < day]:
            self._finish(earlier)  # results come oldest first: that day is complete
        f = self._open.get(day) or self._new_file(day)
        f.writer.write(table)
        feed_ids(f.ids_hash, table.column("kind"), table.column("task_id"))  # nothing of the batch is kept
        f.rows += table.num_rows
        f.kinds[kind] += table.num_rows
        lo, hi = pc.min_max(table.column("date_done")).values()
        f.min_dd = lo.as_py() if f.min_dd is None else min(f.min_dd, lo.as_py())
        f.max_dd = hi.as_py() if f.max_dd is None else max(f.max_dd, hi.as_py())
        if f.writer.size() >= self.max_file_bytes:
            self._finish(day)

    def _new_file(self, day: dt.date) -> _OpenFile:
        if len(self._open) >= _MAX_OPEN:
            self._finish(next(iter(self._open)))
        self._seq += 1
        key = data_key(day, self.run_id, self._seq, extension(self.fmt, self.compression))
        path = self.spool_dir / key.rsplit("/", 1)[-1]
        writer: _FileWriter = _ParquetFile(path, self.compression, self._pool) if self.fmt == "parquet" else _JsonlFile(path, self.compression)
        f = self._open[day] = _OpenFile(key, path, writer)
        return f

    def _finish(self, day: dt.date) -> None:
        """Queue the file's completion (close, put, checksums) on the writer thread, after its
        row groups; FIFO keeps the entries in the order files were finished."""
        self._raise_failed()
        f = self._open.pop(day)
        self._in_flight[f.key] = f
        self._finishing.append(self._pool.submit(self._complete, f))

    def _complete(self, f: _OpenFile) -> FileEntry:
        try:
            f.writer.close()
            sha256 = file_sha256(f.path)
            info = self.sink.put(f.key, f.path, sha256)
            entry = FileEntry(
                key=f.key, format=Format(self.fmt), compression=None if self.compression == "none" else self.compression,
                rows=f.rows, bytes=info.size, sha256=sha256,
                ids_sha256=f.ids_hash.hexdigest(),
                min_date_done=iso(f.min_dd), max_date_done=iso(f.max_dd), kinds=dict(f.kinds),  # type: ignore[arg-type]
            )
            if self.on_put is not None:
                self.on_put(entry)  # e.g. verify it while the run goes on
            return entry
        finally:
            f.path.unlink(missing_ok=True)
            # a finished file's writer (codec contexts, metadata) must not outlive it
            # (memory stays bounded per open file)
            self._in_flight.pop(f.key, None)

    def _raise_failed(self) -> None:
        for fut in self._finishing:
            if fut.done() and fut.exception() is not None:
                fut.result()

    def close(self) -> list[FileEntry]:
        """Finish every file; returns the committed files' entries (raises the first failure)."""
        for day in list(self._open):
            self._finish(day)
        try:
            self.entries = [fut.result() for fut in self._finishing]
        except OSError as exc:
            raise disk_error("staging data files in", self.spool_dir, exc) from exc
        finally:
            self._pool.shutdown()
        return self.entries

    def abort(self) -> None:
        """Drop what is not put yet (the run failed); files already put are left for the
        next run to remove as uncommitted."""
        for fut in self._finishing:
            fut.cancel()
        self._pool.shutdown(wait=True)
        leftovers = [*self._in_flight.values(), *self._open.values()]
        for f in leftovers:
            try:
                f.writer.close()
            except Exception:  # noqa: BLE001 - best effort on the way out of a failure
                pass
            f.path.unlink(missing_ok=True)
        self._open.clear()
