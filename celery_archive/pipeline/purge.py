"""Purge: delete from the source exactly what a verified archive holds, and only where the
source still has it as it was read. The plan is read back from the verified files (not from
memory of the extract), so a resumed run purges the same way; it stays in Arrow columns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery_archive.ahead import ahead
from celery_archive.backends import KEY_COLUMNS, PurgeBatch
from celery_archive.formats import read_tables
from celery_archive.pipeline.verify import VerifiedFile

if TYPE_CHECKING:
    import pyarrow as pa


PurgeFn = Callable[[PurgeBatch], tuple[int, int]]


@dataclass(frozen=True)
class PurgeReport:
    deleted: int = 0
    skipped_changed: int = 0


def plan(files: Iterable[VerifiedFile], batch_size: int, columns: Sequence[str] = KEY_COLUMNS) -> Iterator[PurgeBatch]:
    """Batches of one kind, each contiguous in the order the rows were extracted.

    A run's files of one kind follow extraction order (the writer finishes a file once a later
    day or another kind comes), so a batch may run on from one file into the next. Were they
    interleaved, a batch's key range would hold rows of another batch: the source's check
    against the batch would then refuse the range delete and delete exactly instead.
    """
    import pyarrow.compute as pc

    kind: str | None = None
    pending: list[pa.Table] = []
    size = 0
    for vf in files:
        for table in read_tables(vf.path, vf.entry.format, vf.entry.compression, ("kind", *columns), batch_size, vf.cipher):
            kinds = pc.unique(table["kind"]).to_pylist()
            for k in kinds:
                # one kind per file is the rule: then no copy is made
                part = (table if len(kinds) == 1 else table.filter(pc.equal(table["kind"], k))).drop_columns(["kind"])
                if k != kind and pending and kind is not None:
                    yield PurgeBatch.of(kind, pending)
                    pending, size = [], 0
                kind = k
                offset = 0
                while offset < part.num_rows:
                    take = part.slice(offset, batch_size - size)
                    pending.append(take)
                    size += take.num_rows
                    offset += take.num_rows
                    if size >= batch_size:
                        yield PurgeBatch.of(k, pending)
                        pending, size = [], 0
    if pending and kind is not None:
        yield PurgeBatch.of(kind, pending)


def purge_verified(purge: PurgeFn, files: Iterable[VerifiedFile], batch_size: int,
                   columns: Sequence[str] = KEY_COLUMNS, before_each: Callable[[], None] | None = None) -> PurgeReport:
    """Delete what ``files`` hold through ``purge``; ``columns`` are what the source needs;
    ``before_each`` runs before every batch (the lease's fence: it raises to stop)."""
    deleted = skipped = 0
    for batch in ahead(plan(files, batch_size, columns), "celery-archive-plan"):  # the next batch is read while the source deletes
        if before_each is not None:
            before_each()
        d, s = purge(batch)
        deleted += d
        skipped += s
    return PurgeReport(deleted, skipped)
