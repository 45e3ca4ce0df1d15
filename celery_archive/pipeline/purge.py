"""Purge: delete from the source exactly what a verified archive holds, and only where the
source still has it as it was read. The plan is read back from the verified files (not from
memory of the extract), so a resumed run purges the same way; it stays in Arrow columns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery_archive.pipeline.ahead import ahead
from celery_archive.pipeline.readback import read_tables
from celery_archive.pipeline.verify import VerifiedFile

if TYPE_CHECKING:
    import pyarrow as pa

KEY_COLUMNS = ("source_id", "status", "date_done")


@dataclass(frozen=True)
class PurgeBatch:
    """Verified records of one kind: ``table`` has source_id, status and date_done (naive
    UTC, as the backend stores it), the state they were read in, sorted by (date_done, id),
    so that its first and last rows bound every row of it."""

    kind: str
    table: pa.Table

    @classmethod
    def of(cls, kind: str, tables: list[pa.Table]) -> PurgeBatch:
        import pyarrow as pa

        table = pa.concat_tables(tables)
        if {"date_done", "source_id"} <= set(table.column_names):
            table = table.sort_by([("date_done", "ascending"), ("source_id", "ascending")])
        return cls(kind, table)

    @property
    def keys(self) -> list[str]:
        """Columns that must match for a row to count as unchanged (groups have no status)."""
        return list(KEY_COLUMNS) if self.kind == "task" else ["source_id", "date_done"]

    def bounds(self) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """(date_done, source_id) of the first and the last row."""
        d, i = self.table["date_done"], self.table["source_id"]
        return (d[0].as_py(), i[0].as_py()), (d[-1].as_py(), i[-1].as_py())

    def outside(self, got: dict[str, Any]) -> int:
        """How many returned rows (``got``: the key columns, as Arrow arrays or value tuples)
        are not in this batch: an anti-join in Arrow, no Python object per row."""
        import pyarrow as pa

        if not got:
            return 0
        schema = self.table.schema
        returned = pa.table({k: pa.array(got[k], schema.field(k).type) if not isinstance(got[k], (pa.Array, pa.ChunkedArray))
                             else got[k].cast(schema.field(k).type) for k in self.keys})
        return int(returned.join(self.table.select(self.keys), keys=self.keys, join_type="left anti").num_rows)

    def values(self) -> list[tuple[Any, ...]]:
        return list(zip(*(self.table[k].to_pylist() for k in self.keys)))


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
        for table in read_tables(vf.path, vf.entry["format"], vf.entry["compression"], ("kind", *columns), batch_size):
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
