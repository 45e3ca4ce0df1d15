"""Finding archived results: by task id through the restore index (a few small reads), or
in bulk by run, date range and task name (straight from the committed data files)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from celery_archive.archive.layout import run_id_of
from celery_archive.errors import ArchiveError, NotArchivedError, ObjectNotFoundError, SinkError
from celery_archive.formats import fetch, read_tables
from celery_archive.formats.entries import naive
from celery_archive.index.packs import lookup
from celery_archive.schemas import field_names
from celery_archive.sinks import download

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.archive import manifest as mf
    from celery_archive.backends import Target
    from celery_archive.sinks import ObjectInfo, Sink


class CountingSink:
    """A sink that counts the requests made through it (object reads and listings)."""

    def __init__(self, sink: Sink) -> None:
        self._sink, self.reads, self.lists = sink, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        self.reads += 1
        return self._sink.read(key, start, length)

    def open(self, key: str) -> BinaryIO:
        self.reads += 1
        return self._sink.open(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.lists += 1
        return self._sink.list(prefix)


class Found(NamedTuple):  # NamedTuples, not dataclasses: a lookup need not import those (sinks/base.py)
    records: list[dict[str, Any]]  # one per (id, kind): the latest archived
    missing: list[str]
    reads: int = 0  # object reads (index and data)
    lists: int = 0


def _plain(rec: dict[str, Any], key: str) -> dict[str, Any]:
    """A record with naive-UTC datetimes and where it was found."""
    for name in ("date_done", "archived_at"):
        v = rec.get(name)
        if isinstance(v, dt.datetime) and v.tzinfo is not None:
            rec[name] = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    rec["archive_key"] = key
    return rec


def find(sink: Sink | str, task_ids: Sequence[str], columns: Sequence[str] | None = None) -> Found:
    """The archived records of ``task_ids`` (``sink``: a Sink or its URL); ids not in the
    index are in ``missing``. With ``columns`` (which must hold task_id and kind), only those
    fields are read (and ``archive_key``)."""
    if isinstance(sink, str):
        from celery_archive.sinks import open_sink

        sink = open_sink(sink)
    counting = CountingSink(sink)
    entries = lookup(counting, task_ids)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for tid, found in entries.items():
        for e in found:  # the newest run wins (run ids sort by time): a result archived again
            k = (tid, e["kind"])
            if k not in latest or run_id_of(e["key"]) > run_id_of(latest[k]["key"]):
                latest[k] = e
    by_key: dict[str, list[dict[str, Any]]] = {}
    for e in latest.values():
        by_key.setdefault(e["key"], []).append(e)
    records = []
    for key, group in sorted(by_key.items()):
        try:
            table = fetch(counting, key, group, columns)
        except ObjectNotFoundError as exc:
            raise missing_file(sink, key) from exc
        except ArchiveError:  # a storage failure, key material missing or refused: it says so itself
            raise
        except Exception as exc:
            raise damaged_file(sink, key, exc) from exc
        records += [_plain(r, key) for r in naive(table).to_pylist()]
    order = {t: i for i, t in enumerate(task_ids)}
    records.sort(key=lambda r: (order.get(r["task_id"], 0), r["kind"]))
    missing = [t for t in dict.fromkeys(task_ids) if t not in entries]
    return Found(records, missing, counting.reads, counting.lists)


def select(sink: Sink, spool: Path, *, run_id: str | None = None, since: dt.datetime | None = None,
           until: dt.datetime | None = None, names: Iterable[str] = ()) -> Iterator[list[dict[str, Any]]]:
    """Records in batches, from the committed data files: of one run, with ``since`` <=
    date_done < ``until`` (naive UTC), and a task name matching one of ``names`` (globs). A
    result archived more than once (restored, then archived again) comes once, its newest copy,
    as a lookup by id gives it: the newest run's files are read first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from celery_archive.pipeline.rules import glob_mask

    patterns = list(names)
    from celery_archive.archive import manifest as mf  # not for a lookup by id: its import costs a CLI restore ~13 ms

    seen: set[tuple[str, str]] = set()
    for entry in sorted(mf.committed_files(sink, run_id), key=lambda e: run_id_of(e.key), reverse=True):  # stable: a run's order kept
        lo = dt.datetime.fromisoformat(entry.min_date_done.replace("Z", "+00:00")).replace(tzinfo=None)
        hi = dt.datetime.fromisoformat(entry.max_date_done.replace("Z", "+00:00")).replace(tzinfo=None)
        if (since and hi < since) or (until and lo >= until):
            continue
        path = spool / "restore-select.data"
        try:
            size, sha256 = download(sink, entry.key, path)
        except ObjectNotFoundError as exc:
            raise missing_file(sink, entry.key) from exc
        if (size, sha256) != (entry.bytes, entry.sha256):
            raise damaged_file(sink, entry.key, ValueError(f"{size:,} bytes with sha256 {sha256[:12]}..., where its manifest "
                                                              f"says {entry.bytes:,} bytes, sha256 {entry.sha256[:12]}..."))
        for t in _tables(sink, entry, path):
            mask = pa.array([True] * t.num_rows)
            if since:
                mask = pc.and_(mask, pc.greater_equal(t.column("date_done"), pa.scalar(since, t.column("date_done").type)))
            if until:
                mask = pc.and_(mask, pc.less(t.column("date_done"), pa.scalar(until, t.column("date_done").type)))
            if patterns:
                mask = pc.and_(mask, glob_mask(t.column("name"), patterns))
            rows = [r for r in t.filter(mask).to_pylist() if (r["task_id"], r["kind"]) not in seen]
            seen.update((r["task_id"], r["kind"]) for r in rows)
            if rows:
                yield [_plain(r, entry.key) for r in rows]
        path.unlink()


def _tables(sink: Sink, entry: mf.FileEntry, path: Path) -> Iterator[pa.Table]:
    from celery_archive.crypto import cipher_of  # not for a lookup by id of a file that is not encrypted

    cipher = cipher_of(sink, entry)
    try:
        yield from read_tables(path, entry.format, entry.compression, field_names(), cipher=cipher)
    except ArchiveError:
        raise
    except Exception as exc:
        raise damaged_file(sink, entry.key, exc) from exc


def missing_file(sink: Sink, key: str) -> SinkError:
    return SinkError(f"data file {key} of a committed run is missing from {sink.url}: nothing was restored from it; "
                     f"`celery-archive verify --sink {sink.url}` lists what is missing or damaged")


def damaged_file(sink: Sink, key: str, exc: Exception) -> SinkError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SinkError(f"data file {key} in {sink.url} is damaged ({detail}): nothing was restored from it; "
                     f"`celery-archive verify --sink {sink.url}` checks every file, and a damaged one can only be "
                     "replaced from a copy of the archive")


class RestoreReport(NamedTuple):
    into: str
    found: int
    restored: int
    skipped: int
    overwritten: int
    missing: list[str]
    reads: int

    def to_json(self) -> dict[str, Any]:
        return {"command": "restore", **self._asdict()}


def records_for(sink: Sink, spool: Path | None, task_ids: Sequence[str], columns: Sequence[str] | None = None,
                **filters: Any) -> tuple[Iterator[list[dict[str, Any]]], Found]:
    """Batches of records: of ``task_ids`` (through the index: only ``columns`` of them, when
    given) or, without ids, of the run / date range / names in ``filters`` (from the data
    files, staged in ``spool``: a lookup by id needs none). The Found tells what was missed."""
    if task_ids:
        found = find(sink, task_ids, columns)
        return iter([found.records] if found.records else []), found
    if spool is None:
        raise TypeError("a selection by run, date or name stages data files: give it a spool directory")
    return select(sink, spool, **filters), Found([], [])


def restore_into(sink: Sink, target: Target, spool: Path | None, task_ids: Sequence[str], on_conflict: str = "skip",
                 **filters: Any) -> RestoreReport:
    """Put archived results back into ``target``; nothing is written if an id is missing."""
    from celery_archive.backends import PutReport

    batches, found = records_for(sink, spool, task_ids, **filters)
    if found.missing:
        raise NotArchivedError(missing_message(found.missing, sink))
    total = PutReport()
    n = 0
    for batch in batches:
        rep = target.put(batch, on_conflict)
        n += len(batch)
        total.restored += rep.restored
        total.skipped += rep.skipped
        total.overwritten += rep.overwritten
    return RestoreReport(target.display_url, n, total.restored, total.skipped, total.overwritten, [], found.reads)


def missing_message(missing: Sequence[str], sink: Sink) -> str:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (f"not in the archive at {sink.url}: {shown}; check the id, or if the archive was written by an older "
            f"version or copied by hand, run `celery-archive index rebuild --sink {sink.url}`")
