"""The source contract: a result backend the pipeline reads from and purges.

* ``open()`` connects and checks the backend is Celery's, raising SourceError with what to fix.
* ``extract(cutoff, batch_size, run_id, archived_at)`` yields record tables (the Arrow record
  schema) of finished results older than ``cutoff`` (naive UTC), oldest first where the backend
  can order them; it never changes the backend.
* ``stats(cutoff, everything=False)`` gives (kind, status, name, day, count, bytes) of what
  extract would take, or with ``everything`` of every result the backend holds.
* ``purge(batch)`` deletes the batch's results only where the backend still holds them exactly
  as they were read, and returns (deleted, skipped because changed or gone).
* ``purge_columns`` names the record columns ``purge`` needs (read back from verified files).
* ``counts`` holds what a run saw but did not take (for Redis: no_ttl, not_celery, ...; for
  SQL: no_task_id, bad_date_done), and date_done_ambiguous (wall times of a repeated hour);
  ``examples`` names, for each reason a record was left alone, the first few of them.
* ``describe_dates()`` says, per kind, how stored date_done values become UTC instants;
  ``warnings`` what the source found doubtful about them (said before anything is deleted).
* ``newest(cutoff)`` is (task id, date_done as stored, its UTC instant) of the newest finished
  result older than ``cutoff`` (of all with None), for dry runs and stats.
* ``describe()`` names where results live (tables or key patterns), for manifests;
  ``display_url`` is the source URL without secrets; ``close()`` lets go of connections.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.pipeline.purge import PurgeBatch


REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")  # Celery's Redis result_backend URLs

StatsRow = tuple[str, str | None, str | None, str, int, int]  # kind, status, name, day, count, bytes


@dataclass
class Tally:
    """``stats`` rows added up: results and stored bytes, by kind, status, task name and day."""

    results: int = 0
    bytes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_name: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, rows: Iterable[StatsRow]) -> Tally:
        t = cls()
        for kind, status, name, day, n, nbytes in rows:
            t.results += n
            t.bytes += nbytes
            t.by_kind[kind] += n
            t.by_status[status or ("(group)" if kind == "group" else "(unknown)")] += n
            t.by_name[name or "(unnamed)"] += n
            t.by_day[day] += n
        return t


class Source(Protocol):
    display_url: str
    storage_format: str
    purge_columns: tuple[str, ...]

    @property
    def counts(self) -> Mapping[str, int]: ...

    @property
    def examples(self) -> Mapping[str, list[str]]: ...

    def open(self) -> None: ...

    def describe(self) -> dict[str, str]: ...

    @property
    def warnings(self) -> list[str]: ...

    def describe_dates(self) -> dict[str, object]: ...

    def newest(self, cutoff: dt.datetime | None) -> tuple[str, str, dt.datetime] | None: ...

    def extract(self, cutoff: dt.datetime, batch_size: int, run_id: str, archived_at: dt.datetime) -> Iterator[pa.Table]: ...

    def stats(self, cutoff: dt.datetime, everything: bool = False) -> list[StatsRow]: ...

    def purge(self, batch: PurgeBatch) -> tuple[int, int]: ...

    def close(self) -> None: ...
