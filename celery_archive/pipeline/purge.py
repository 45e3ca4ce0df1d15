"""Purge: delete from the source exactly what a verified archive holds, and only where the
source still has it as it was read. The plan is read back from the verified files, not
from memory of the extract, so a resumed run purges the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from celery_archive.pipeline.readback import read_columns
from celery_archive.pipeline.records import PurgeRow
from celery_archive.pipeline.verify import VerifiedFile

PurgeFn = Callable[[str, Sequence[PurgeRow]], tuple[int, int]]
_COLUMNS = ("kind", "task_id", "status", "date_done", "source_id")


@dataclass(frozen=True)
class PurgeReport:
    deleted: int = 0
    skipped_changed: int = 0


def _naive(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts


def plan(files: Iterable[VerifiedFile], batch_size: int) -> Iterable[tuple[str, list[PurgeRow]]]:
    """(kind, rows) batches, each contiguous in the order the rows were extracted."""
    for vf in files:
        pending: dict[str, list[PurgeRow]] = {}
        for cols in read_columns(vf.path, vf.entry["format"], vf.entry["compression"], _COLUMNS):
            for kind, tid, status, done, sid in zip(*(cols[c] for c in _COLUMNS)):
                rows = pending.setdefault(kind, [])
                rows.append(PurgeRow(sid, tid, status, _naive(done)))
                if len(rows) >= batch_size:
                    yield kind, rows
                    pending[kind] = []
        for kind, rows in pending.items():
            if rows:
                yield kind, rows


def purge_verified(purge: PurgeFn, files: Iterable[VerifiedFile], batch_size: int) -> PurgeReport:
    deleted = skipped = 0
    for kind, rows in plan(files, batch_size):
        d, s = purge(kind, rows)
        deleted += d
        skipped += s
    return PurgeReport(deleted, skipped)
