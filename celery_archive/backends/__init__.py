"""The source contract: a result backend the pipeline reads from and purges.

* ``open()`` connects and checks the backend is Celery's, raising SourceError with what to fix.
* ``extract(cutoff, batch_size, run_id, archived_at)`` yields record tables (the Arrow record
  schema) of finished results older than ``cutoff`` (naive UTC), oldest first where the backend
  can order them; it never changes the backend.
* ``stats(cutoff, everything=False)`` gives (kind, status, name, day, count, bytes) of what
  extract would take, or with ``everything`` of every result the backend holds.
* ``purge(batch)`` deletes the batch's results only where the backend still holds them exactly
  as they were read, and returns (deleted, skipped because changed or gone).
* ``purge_columns`` names the record columns ``purge`` needs (read back from verified files);
  ``purge_rows`` is the most rows a purge batch of this backend needs to hold (None: the run's
  purge batch size decides), so that no more of them is read into memory at once.
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
import importlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from celery_archive.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.config import RunConfig


class StorageFormat(StrEnum):
    """How the backend a record came from stored it (the record's ``storage_format``): what
    its raw_* columns hold, and so which targets can take it back byte for byte."""

    CELERY_DB_57 = "celery-db-5.7"  # Celery >= 5.7's tables: result etc. in the app's serializer
    CELERY_DB_56 = "celery-db-5.6"  # Celery <= 5.6's tables: PickleType columns
    CELERY_REDIS = "celery-redis"  # one key per result: the whole meta in the app's serializer
    DJANGO = "django-celery-results"  # its TaskResult / GroupResult tables


# The one registry of result backends: a URL's start -> the package (here) holding the backend's
# source.py (``from_config(RunConfig) -> Source``) and target.py (``from_config(TargetConfig) ->
# Target``), imported only when used. First match wins; "" (every other URL) is SQLAlchemy's.
# Redis Cluster (redis/cluster/) has no scheme in Celery: Celery has no cluster result backend.
REGISTRY: tuple[tuple[str, str], ...] = (
    ("redis+cluster://", "redis.cluster"), ("rediss+cluster://", "redis.cluster"),
    ("redis://", "redis"), ("rediss://", "redis"), ("redis+socket://", "redis"), ("sentinel://", "redis"),
    ("django+", "django"),
    ("", "sql"),
)
REDIS_SCHEMES = tuple(start[:-3] for start, name in REGISTRY if name.split(".")[0] == "redis")  # Redis URLs, cluster's too


def backend_of(url: str) -> str:
    """The registry's name of the backend a source or target URL names."""
    return next(name for start, name in REGISTRY if url.startswith(start))


def _module(url: str, part: str) -> Any:
    return importlib.import_module(f"{__name__}.{backend_of(url)}.{part}")


def open_source(cfg: RunConfig) -> Source:
    """The source for ``cfg.source``, connected. Each backend's client library is imported only
    when it is used."""
    source: Source = _module(cfg.source, "source").from_config(cfg)
    source.open()
    return source


def open_target(cfg: TargetConfig) -> Target:
    """The restore target for ``cfg.url`` (connections are made on first use)."""
    target: Target = _module(cfg.url, "target").from_config(cfg)
    return target

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
    storage_format: StorageFormat
    purge_columns: tuple[str, ...]
    purge_rows: int | None
    purge_alongside: bool  # its purge may run on a thread of its own while it extracts (a run in parts: parts.py)

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


POLICIES = ("skip", "overwrite", "fail")


@dataclass
class PutReport:
    restored: int = 0
    skipped: int = 0
    overwritten: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class Target(Protocol):
    display_url: str

    def put(self, records: list[dict[str, Any]], on_conflict: str) -> PutReport: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TargetConfig:
    url: str
    ttl: dt.timedelta | None = dt.timedelta(days=1)  # Redis: result_expires; None keeps no TTL
    serializer: str = "json"  # the target app's result_serializer (used only to convert)
    key_prefix: str = ""  # Redis global_keyprefix (used only for results archived from SQL)
    task_table: str = "celery_taskmeta"
    group_table: str = "celery_tasksetmeta"
    task_schema: str | None = None
    group_schema: str | None = None
    master_name: str | None = None


def check_policy(on_conflict: str) -> None:
    if on_conflict not in POLICIES:
        raise ConfigError(f"--on-conflict must be one of {', '.join(POLICIES)}, not {on_conflict!r}")

