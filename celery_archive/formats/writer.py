"""The archive writer: records to data files of any format (parquet.py, jsonl.py), Hive-style
``data/date=YYYY-MM-DD/`` partitions, each file rolled at a size limit and put to the sink
only when complete."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from celery_archive.archive.layout import data_key
from celery_archive.archive.manifest import FileEntry, Format
from celery_archive.errors import disk_error
from celery_archive.formats import DEFAULT_COMPRESSION, module
from celery_archive.formats.entries import feed_ids
from celery_archive.sinks import Sink
from celery_archive.times import iso

if TYPE_CHECKING:
    import pyarrow as pa

_MAX_OPEN = 4  # open partitions at once (results arrive sorted by date_done, so one is usual)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _FileWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


@dataclass
class _OpenFile:
    key: str
    path: Path
    writer: _FileWriter
    rows: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    encryption_key: str | None = None  # keys/...: its wrapped data key (an encrypted sink)
    ids_hash: Any = field(default_factory=hashlib.sha256)  # over kind:task_id lines, fed as rows go in
    min_dd: dt.datetime | None = None
    max_dd: dt.datetime | None = None


class ArchiveWriter:
    """Routes record batches to per-day files, rolls them at ``max_file_bytes`` and puts
    each finished file to the sink. ``close()`` returns the committed files' entries."""

    def __init__(self, sink: Sink, run_id: str, fmt: str, compression: str | None,
                 max_file_bytes: int, spool_dir: Path, on_put: Callable[[FileEntry], None] | None = None,
                 first_seq: int = 0) -> None:
        self.sink, self.run_id, self.fmt, self.on_put = sink, run_id, fmt, on_put
        self.compression = compression or DEFAULT_COMPRESSION[fmt]
        self.max_file_bytes, self.spool_dir = max_file_bytes, spool_dir
        self.entries: list[FileEntry] = []
        self._open: dict[dt.date, _OpenFile] = {}
        self._seq = first_seq  # a shard's files are numbered from its own base (pipeline/shards.py)
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
        fmt = module(self.fmt)
        key = data_key(day, self.run_id, self._seq, fmt.extension(self.compression))
        path = self.spool_dir / key.rsplit("/", 1)[-1]
        # an encrypted sink: the file's own data key, stored (wrapped) before a byte of the file
        cipher = None if self.sink.encryption is None else self.sink.encryption.new_cipher(self.sink, key)
        writer: _FileWriter = fmt.FileWriter(path, self.compression, self._pool, cipher)
        f = self._open[day] = _OpenFile(key, path, writer, encryption_key=None if cipher is None else cipher.name)
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
                encryption_key=f.encryption_key,
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
