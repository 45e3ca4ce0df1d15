"""Celery's database result backend (SQLAlchemy Core) as a source.

Every statement is built with SQLAlchemy Core. On PostgreSQL, reads and range deletes run
through ADBC (Arrow Database Connectivity), which hands back Arrow columns straight from the
wire with no Python object per value; the only values rendered into that SQL are the run's
own datetimes, row ids and status names. Other databases run through SQLAlchemy, their pages
read as the DB-API driver's tuples (no Row object per row); MySQL's date_done comes as text,
parsed in Arrow. The purge is purge.py's.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.sql.dml import ReturningDelete

from celery_archive.ahead import ahead
from celery_archive.backends import PurgeBatch, StorageFormat
from celery_archive.backends.dates import Naive, celery_rule, parse_version
from celery_archive.backends.records import RAW_TYPES, build_records, malformed
from celery_archive.backends.shard import Shard
from celery_archive.backends.sql import mysql_arrow
from celery_archive.backends.sql.dates import EXAMPLES, FINISHED, StoredDates, check_dates, keep_rows, newest
from celery_archive.backends.sql.driver import driver_rows, text_or_bytes, texts, timestamps, undecodable
from celery_archive.backends.sql.keys import after_key, in_shard, last_value, split_ids
from celery_archive.backends.sql.purge import purge as purge_batch
from celery_archive.backends.sql.stats import before_year_1, count_results, noted
from celery_archive.backends.sql.url import UTC_SESSION, adbc_uri, parse_source_url, session_zone
from celery_archive.errors import SourceError, scrubbed

if TYPE_CHECKING:
    from celery_archive.config import RunConfig

_TASK_COLUMNS = ("id", "task_id", "status", "result", "date_done", "traceback", "children",
                 "name", "args", "kwargs", "worker", "retries", "queue", "stamps")


@dataclass(frozen=True)
class SqlSourceConfig:
    """Where Celery's database backend keeps results (mirrors Celery's settings)."""

    url: str
    task_table: str = "celery_taskmeta"
    group_table: str = "celery_tasksetmeta"
    task_schema: str | None = None  # database_table_schemas["task"]
    group_schema: str | None = None  # database_table_schemas["group"]
    serializer: str = "json"  # result_serializer
    timezone: str | None = None  # the app's zone (timezone / enable_utc); None: not known
    celery_version: str | None = None  # of the workers that wrote the results; None: the installed one


def _sa_type(t: pa.DataType) -> Any:
    """A SQLAlchemy type for an Arrow column type (enough to compile statements)."""
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    if pa.types.is_integer(t):
        return sa.BigInteger() if t.bit_width > 32 else sa.Integer()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return sa.LargeBinary()
    return sa.String()


class SqlSource:
    """Celery's own tables; a subclass reading others so (django/source.py) sets the class attributes, overrides columns, build, _format, _not_found."""

    purge_columns: tuple[str, ...] = ("source_id", "status", "date_done", "raw_date_done")
    purge_rows: int | None = None  # one range DELETE a batch: --purge-batch decides
    required: ClassVar[dict[str, set[str]]] = {"task": {"id", "task_id", "status", "result", "date_done"},
                                               "group": {"id", "taskset_id", "result", "date_done"}}
    name_column = "name"
    what = "a Celery result table"
    sized_columns: tuple[str, ...] = ("result", "args", "kwargs", "traceback", "children", "stamps")
    arrow_pages = True  # a SQLite file's pages read as Arrow columns where they can be (build takes Arrow arrays)
    column_types: ClassVar[Mapping[str, pa.DataType]] = RAW_TYPES  # what each stored column must hold (else: malformed)

    def __init__(self, config: SqlSourceConfig) -> None:
        self.config = config
        self._url = parse_source_url(config.url)
        self.display_url = "db+" + self._url.render_as_string(hide_password=True)
        self._secret = self._url.password
        self._engine: sa.Engine | None = None
        self.dialect = self._url.get_dialect()()  # compiles statements; needs no connection
        self.purge_alongside = self.dialect.name != "sqlite"  # SQLite: one writer, and readers hold it off
        self._adbc_uri = adbc_uri(self._url)
        self._sqlite_path = self._url.database if self.arrow_pages and self.dialect.name == "sqlite" and not self._url.query \
            and self._url.database not in (None, "", ":memory:") and _sqlite_arrow() else None  # pages read by ADBC
        self._mysql_uri = mysql_arrow.uri(self._url) if self.arrow_pages else None  # pages read by ConnectorX (mysql_arrow.py)
        self._adbc_idle: list[Any] = []  # ADBC connections not in use (PostgreSQL)
        self._adbc_all: list[Any] = []
        self.tables: dict[str, sa.Table] = {}
        self.storage_format = StorageFormat.CELERY_DB_57
        self.counts: Counter[str] = Counter()  # rows seen but not taken: no_task_id, bad_date_done, ...
        self.dates = StoredDates(self.dialect.name, {}, {})
        self.warnings: list[str] = []
        self.examples: dict[str, list[str]] = {}
        self.shard: Shard | None = None  # restrict(): only this shard's id ranges

    # -- errors -------------------------------------------------------------------------
    def _error(self, action: str, exc: Exception) -> SourceError:
        return SourceError(f"{action} {self.display_url} failed: {scrubbed(exc, [self._secret])}")

    @property
    def engine(self) -> sa.Engine:
        """SQLAlchemy's engine, made on first use (on PostgreSQL only dry runs and the exact delete need it)."""
        if self._engine is None:
            utc = UTC_SESSION if self._url.get_backend_name() == "postgresql" else {}
            pool = {"poolclass": sa.pool.NullPool} if self._sqlite_path else {}  # no lock held at an ADBC close (sqlite_arrow.py)
            self._engine = sa.create_engine(self._url, pool_pre_ping=True, connect_args=utc, **pool)
        return self._engine

    # -- setup ----------------------------------------------------------------------------
    def _columns(self, name: str, schema: str | None) -> list[sa.Column[Any]] | None:
        """The table's columns (names and types), or None if there is no such table."""
        if self._adbc_uri:
            import adbc_driver_manager

            with self._adbc() as adbc:
                try:
                    fields = adbc.adbc_get_table_schema(name, db_schema_filter=schema)
                except adbc_driver_manager.Error as exc:
                    if exc.status_code != adbc_driver_manager.AdbcStatusCode.NOT_FOUND:
                        raise
                    return None
                finally:
                    adbc.rollback()  # the catalog query's transaction, or the failed one
            return [sa.Column(f.name, _sa_type(f.type)) for f in fields]
        with self.engine.connect() as conn:
            try:
                return [sa.Column(c["name"], c["type"]) for c in sa.inspect(conn).get_columns(name, schema=schema)]
            except sa.exc.NoSuchTableError:
                return None

    def open(self) -> None:
        """Connect and find Celery's tables; raises SourceError with what to fix."""
        cfg = self.config
        try:
            for kind, name, schema in (("task", cfg.task_table, cfg.task_schema), ("group", cfg.group_table, cfg.group_schema)):
                columns = self._columns(name, schema)  # the column list is all that is needed
                if columns is None:
                    if kind == "group":
                        continue  # groups are optional: only apps that save GroupResults have them
                    raise SourceError(self._not_found(f"{schema}.{name}" if schema else name))
                if self.dialect.name == "sqlite":  # stored text, read and compared exactly as it is
                    columns = [sa.Column(c.name, sa.String()) if c.name == "date_done" else c for c in columns]
                table = sa.Table(name, sa.MetaData(), *columns, schema=schema)
                missing = self.required[kind] - set(table.c.keys())
                if missing:
                    raise SourceError(f"table {table.fullname} is not {self.what}: it has no column(s) {', '.join(sorted(missing))}")
                self.tables[kind] = table
            aware = {k: bool(getattr(t.c.date_done.type, "timezone", False)) for k, t in self.tables.items()}
            self.dates = StoredDates(self.dialect.name, {k: self._rule(k) for k in self.tables}, aware)
            self._check_dates()
        except SourceError:
            raise
        except Exception as exc:
            raise self._error("connecting to", exc) from exc
        self.storage_format = self._format(set(self.tables["task"].c.keys()))

    # -- dates ------------------------------------------------------------------------------
    def _rule(self, kind: str) -> Naive:
        """How Celery stored naive date_done values in ``kind``'s table (dates.py)."""
        backend = self.dialect.name if self.dialect.name in ("postgresql", "sqlite") else "mysql"
        if backend == "postgresql" and not hasattr(self, "_zone"):
            self._zone, conn = session_zone(self._url, self._adbc_uri is not None)
            if conn is not None:  # now in UTC: it joins the source's own connections
                self._adbc_all.append(conn)
                self._adbc_idle.append(conn)
        session = self._zone if backend == "postgresql" else None
        return celery_rule(backend, kind, parse_version(self.config.celery_version), self.config.timezone, session)

    def _check_dates(self) -> None:
        note = check_dates(self)
        if note:
            self.warnings.append(note)

    def describe_dates(self) -> dict[str, object]:
        return {kind: rule.describe() for kind, rule in self.dates.rules.items()}

    def newest(self, cutoff: dt.datetime | None, kinds: tuple[str, ...] = ("task", "group")) -> tuple[str, str, dt.datetime] | None:
        """(task id, stored date_done, its UTC instant) of the newest finished result older than
        ``cutoff`` (of all, with None)."""
        return newest(self, cutoff, kinds)

    def _format(self, columns: set[str]) -> StorageFormat:
        return StorageFormat.CELERY_DB_57 if {"children", "stamps"} & columns else StorageFormat.CELERY_DB_56

    def _not_found(self, where: str) -> str:
        return (f"table {where} not found in {self.display_url}: is this Celery's result database? "
                "If you renamed it (database_table_names), pass --task-table")

    def describe(self) -> dict[str, str]:
        return {kind: t.fullname for kind, t in self.tables.items()}

    def close(self) -> None:
        while self._adbc_all:
            self._adbc_all.pop().close()
        self._adbc_idle.clear()
        if self._engine is not None:
            self._engine.dispose()

    # -- helpers --------------------------------------------------------------------------
    @contextmanager
    def _adbc(self) -> Iterator[Any]:
        """An ADBC connection (PostgreSQL) of the source's own: one for each thread using
        one at the same time, opened on first need and kept for the next user."""
        try:
            conn = self._adbc_idle.pop()
        except IndexError:
            from celery_archive.backends.sql.adbc import connect

            conn = connect(self._adbc_uri or "")
            self._adbc_all.append(conn)
        try:
            yield conn
        finally:
            self._adbc_idle.append(conn)

    def _literal(self, stmt: sa.Select[Any] | ReturningDelete[Any]) -> str:
        return str(stmt.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))

    def _query(self, stmt: sa.Select[Any] | ReturningDelete[Any], conn: Any) -> dict[str, Any]:
        """Run a row-returning statement on ``conn`` (ADBC's on PostgreSQL, else SQLAlchemy's):
        its columns by name (Arrow arrays or value tuples)."""
        names = [c.name for c in (stmt.selected_columns if isinstance(stmt, sa.Select) else stmt.exported_columns)]
        if self._adbc_uri:
            with conn.cursor() as cur:
                cur.execute(self._literal(stmt))
                table = cur.fetch_arrow_table()
            if isinstance(stmt, sa.Select):
                # end the read's transaction: an idle open one would hold a lock on Celery's
                # table all run long (blocking, say, Celery 5.7's own ALTER TABLE migration)
                conn.rollback()
            return {n: table.column(i) for i, n in enumerate(names)} if table.num_rows else {}
        rows = driver_rows(conn, stmt) if isinstance(stmt, sa.Select) else conn.execute(stmt).all()
        return dict(zip(names, zip(*rows))) if rows else {}

    def _selected(self, kind: str, table: sa.Table, cutoff: dt.datetime) -> list[sa.ColumnElement[bool]]:
        conds = [table.c.date_done.is_not(None), *self.dates.older(kind, table.c.date_done, cutoff)]
        if kind == "task":
            conds.append(table.c.status.in_(FINISHED))
        return conds + in_shard(self.shard, kind, table)

    def text_dates(self, table: sa.Table) -> bool:
        """Whether date_done is read as text, and parsed in Arrow: on MySQL, where its driver
        spends more on making datetimes than on the rest of a row."""
        return self.dialect.name in ("mysql", "mariadb") and isinstance(table.c.date_done.type, sa.DateTime)

    def shards(self, cutoff: dt.datetime, n: int) -> list[Shard]:
        """At most ``n`` shards of the rows under ``cutoff`` (keys.py)."""
        return split_ids(self, cutoff, n)

    def restrict(self, shard: Shard) -> None:
        self.shard = shard

    # -- extract --------------------------------------------------------------------------
    def _pages(self, kind: str, table: sa.Table, names: list[str], cutoff: dt.datetime, batch_size: int) -> Iterator[dict[str, Any]]:
        """Keyset pages of columns; the next page is fetched on a thread while the caller
        works on this one (the driver waits on the server without the GIL)."""
        text = self.text_dates(table)
        base = sa.select(*[sa.cast(table.c[n], sa.String()).label(n) if text and n == "date_done" else table.c[n] for n in names])
        base = base.where(*self._selected(kind, table, cutoff)).order_by(table.c.date_done, table.c.id).limit(batch_size)

        def fetch(last: tuple[Any, Any] | None) -> dict[str, Any]:
            stmt = base if last is None else base.where(after_key(self.dialect.name, table, last))
            try:
                page = self._arrow_page(stmt) if self._sqlite_path else self._mysql_page(stmt) if self._mysql_uri else None
                if page is None:
                    with self._adbc() if self._adbc_uri else self.engine.connect() as conn:
                        try:
                            page = self._query(stmt, conn)
                        except Exception as exc:
                            if not undecodable(exc):
                                raise
                            with texts(conn, text_or_bytes):  # the page again, such text as its bytes: malformed
                                page = self._query(stmt, conn)
            except Exception as exc:
                raise self._error("reading results from", exc) from exc
            if text and page:
                page["date_done"] = timestamps(page["date_done"])
            return page

        def pages() -> Iterator[dict[str, Any]]:
            page = fetch(None)
            while page:
                yield page
                if len(page["id"]) < batch_size:
                    return
                page = fetch((last_value(page["date_done"]), last_value(page["id"])))

        yield from ahead(pages(), "celery-archive-extract")

    def _arrow_page(self, stmt: sa.Select[Any]) -> dict[str, Any] | None:
        """A page of a SQLite file as Arrow columns (sqlite_arrow.py), or None: read it through
        the DB-API driver."""
        from celery_archive.backends.sql import sqlite_arrow

        query = sqlite_arrow.checked(stmt)
        page = None if query is None else sqlite_arrow.read(self._sqlite_path or "", self._literal(query), stmt)
        if page:
            page["date_done"] = page["date_done"].to_pylist()  # SQLite's text, read as the driver's (dates.py)
        return page

    def _mysql_page(self, stmt: sa.Select[Any]) -> dict[str, Any] | None:
        """A MySQL/MariaDB page as Arrow columns (mysql_arrow.py), or None: read it through the DB-API driver."""
        return mysql_arrow.read(self._mysql_uri or "", self._literal(stmt), stmt)

    def extract(self, cutoff: dt.datetime, batch_size: int, run_id: str, archived_at: dt.datetime) -> Iterator[pa.Table]:
        """Finished results whose date_done is an instant before ``cutoff`` (naive UTC), in
        stored order, as record batches; rows without a task id or a readable date are counted."""
        for kind, table in self.tables.items():
            for fetched in self._pages(kind, table, self.columns(kind, table), cutoff, batch_size):
                # a new dict: the prefetch thread still reads the fetched page's last key
                page = self.dates.read(kind, dict(fetched), cutoff, self.counts, self._id(kind, table).name,
                                       self.examples, table.fullname)
                if page is not None and self.dialect.name == "sqlite":  # other databases keep a column's type
                    page = self._sound(page, table)
                if page is not None:
                    yield self.build(kind, page, table, run_id, archived_at)
            self._before_year_1(kind, table)

    def _before_year_1(self, kind: str, table: sa.Table) -> None:
        """Count the rows the pages leave out for a date_done before year 1 (stats.py)."""
        stmt = before_year_1(self, kind, table)
        if stmt is None:
            return
        try:
            with self._adbc() if self._adbc_uri else self.engine.connect() as conn:
                got = self._query(stmt, conn)
        except Exception as exc:
            raise self._error("reading results from", exc) from exc
        noted(self, table, [got[n][0] for n in got] if got else (0, None))

    def _sound(self, page: dict[str, Any], table: sa.Table) -> dict[str, Any] | None:
        """The page less rows holding a value of a type Celery never writes there (counted as
        ``malformed``, the first few named): they stay in the backend, and the rest goes on."""
        bad = malformed(page, self.column_types)
        if not bad:
            return page
        self.counts["malformed"] += len(bad)
        shown = self.examples.setdefault("malformed", [])
        ids = page["id"]
        for i, what in list(bad.items())[:max(0, EXAMPLES - len(shown))]:
            row_id = ids[i].as_py() if hasattr(ids[i], "as_py") else ids[i]
            shown.append(f"{table.fullname} id={row_id} ({what})")
        keep = pa.array([i not in bad for i in range(len(ids))])
        return {k: keep_rows(v, keep) for k, v in page.items()} if len(bad) < len(ids) else None

    id_columns: ClassVar[dict[str, str]] = {"task": "task_id", "group": "taskset_id"}

    def _id(self, kind: str, table: sa.Table) -> sa.Column[Any]:
        return table.c[self.id_columns[kind]]

    def columns(self, kind: str, table: sa.Table) -> list[str]:
        """The stored columns a record is built from."""
        return [n for n in _TASK_COLUMNS if n in table.c] if kind == "task" else ["id", "taskset_id", "result", "date_done"]

    def build(self, kind: str, page: dict[str, Any], table: sa.Table, run_id: str, archived_at: dt.datetime) -> pa.Table:
        """Records from a page of stored columns."""
        if kind == "group":
            page["task_id"] = page.pop("taskset_id")
        return build_records(kind, page, len(page["id"]), serializer=self.config.serializer,
                             storage_format=self.storage_format, source=self.display_url,
                             source_table=table.fullname, run_id=run_id, archived_at=archived_at)

    # -- dry run ----------------------------------------------------------------------------
    def stats(self, cutoff: dt.datetime, everything: bool = False) -> list[tuple[str, str | None, str | None, str, int, int]]:
        """(kind, status, name, day, count, bytes) for what a run would take, or with
        ``everything`` for every result in the tables (day "" when there is no date_done): stats.py."""
        return count_results(self, cutoff, everything)

    # -- purge ----------------------------------------------------------------------------
    def purge(self, batch: PurgeBatch) -> tuple[int, int]:
        """Delete verified rows that are unchanged since read: (deleted, skipped as changed),
        each batch in one transaction with its check (purge.py)."""
        return purge_batch(self, batch)


def _sqlite_arrow() -> bool:
    from celery_archive.backends.sql import sqlite_arrow

    return sqlite_arrow.available()


def from_config(cfg: RunConfig) -> SqlSource:
    return SqlSource(SqlSourceConfig(cfg.source, cfg.task_table, cfg.group_table, cfg.task_schema, cfg.group_schema,
                                     cfg.serializer, cfg.timezone, cfg.celery_version))
