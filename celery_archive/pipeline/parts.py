"""A run in parts: once a run has taken --commit-every results, it commits them as a run of
their own (files, manifest, chain link, audit event) and purges that part on a thread while it
goes on taking the rest, from where the one keyset walk or SCAN of the source has got to.

Each part is a whole run as far as the archive knows: its files are verified before anything
of it is deleted, only unchanged rows go, and a part committed but not purged when the process
dies is finished by the next run's recovery, like any run; the part being written when it dies
never committed, so its files go and its results are still in the source. Parts are purged one
after the other, each while the next is taken; every purge has finished (or stopped at the
lease's fence) before the run gives up its lease.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celery_archive.archive.layout import new_run_id
from celery_archive.pipeline.commit import Checks, finish
from celery_archive.pipeline.extract import StopEarly
from celery_archive.pipeline.write import write_and_commit

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.archive.manifest import FileEntry
    from celery_archive.backends import Source
    from celery_archive.config import RunConfig
    from celery_archive.pipeline.lease import FencedSink, Lease


@dataclass
class Parted:
    """What the parts of a run did, together."""

    ids: list[str] = field(default_factory=list)  # every part's run id, in order (the first is the run's)
    entries: list[FileEntry] = field(default_factory=list)
    selected: int = 0
    stopped_by: str | None = None
    verified: int = 0
    deleted: int = 0
    skipped: int = 0

    def add(self, done: tuple[int, int, int]) -> None:
        self.verified += done[0]
        self.deleted += done[1]
        self.skipped += done[2]


def part_id(run_id: str, now: dt.datetime, n: int) -> str:
    """The run id of part ``n`` (0: the run's own): distinct, and sorted in the order taken."""
    return run_id if n == 0 else new_run_id(now + dt.timedelta(microseconds=n))


class _Taken:
    """The run's batches, handed out part by part: a part ends at the first batch boundary at
    or past ``every`` results, or when a purge under way has failed (its error is raised)."""

    def __init__(self, batches: Iterator[pa.Table], every: int, run_id: str) -> None:
        self._batches, self._every, self._run_id = batches, every, run_id  # the run id the source's records carry
        self._next: pa.Table | None = None
        self.exhausted = False
        self.stopped_by: str | None = None  # --max-runtime or a signal: the run takes nothing more
        self.purging: Future[tuple[int, int, int]] | None = None

    def more(self) -> bool:
        """Whether anything is left to take (a batch is read ahead to know)."""
        if self._next is None and not self.exhausted:
            try:
                self._next = next(self._batches, None)
            except StopEarly as why:
                self.stopped_by = str(why.args[0])
            self.exhausted = self._next is None
        return self._next is not None

    def part(self, run_id: str) -> Iterator[pa.Table]:
        import pyarrow as pa

        taken = 0
        while taken < self._every and self.more():
            if self.purging is not None and self.purging.done():
                self.purging.result()  # raises what made the part before fail: nothing more is taken
            cols, self._next = self._next, None
            assert cols is not None
            if run_id != self._run_id:  # a later part: its records name it
                i = cols.schema.get_field_index("run_id")
                cols = cols.set_column(i, cols.schema.field(i), pa.repeat(pa.scalar(run_id, cols.schema.field(i).type), cols.num_rows))
            taken += cols.num_rows
            yield cols


def run_in_parts(sink: FencedSink, lease: Lease, source: Source, cfg: RunConfig, run_id: str, now: dt.datetime,
                 cutoff: dt.datetime, spool: Path, batches: Iterator[pa.Table]) -> Parted:
    """Take, commit and purge ``batches`` part by part (see the module's docstring)."""
    out = Parted()
    taken = _Taken(batches, cfg.commit_every, run_id)
    purger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-archive-purge")
    try:
        while not out.ids or taken.more():
            pid = part_id(run_id, now, len(out.ids))
            checks = Checks(sink, pid, spool, cfg)
            written = write_and_commit(sink, source, cfg, pid, now, cutoff, spool, checks, taken.part(pid), None, lease.check)
            out.ids.append(pid)
            out.entries += written.entries
            out.selected += written.selected
            if taken.purging is not None:
                out.add(taken.purging.result())  # the part before: purged while this one was taken
            taken.purging = purger.submit(finish, sink, source, written.manifest, spool, cfg, checks, lease.check)
        assert taken.purging is not None
        out.add(taken.purging.result())
        out.stopped_by = taken.stopped_by
    finally:
        purger.shutdown(wait=True)  # no purge goes on once the run lets its lease go
    return out
