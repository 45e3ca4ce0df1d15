"""Purge: delete a verified batch from a Celery SQL table, only the rows unchanged since read,
each batch in one transaction with its check (SqlSource.purge).

The batch is contiguous in (date_done, id) order, as extracted, so its first and last rows
bound a key range, and nothing is deleted unless every row of that range is a verified row as
it was read:

* PostgreSQL (ADBC) and other databases with DELETE ... RETURNING: one DELETE over the range
  returning the keys it took, committed only if they all are.
* SQLite and MySQL/MariaDB: the range is locked first (SQLite: BEGIN IMMEDIATE, the one writer;
  MySQL: SELECT ... FOR UPDATE of its rows), its keys read as the driver's plain tuples and
  checked, then a plain DELETE of the range, which must take exactly as many rows as were checked
  (rows that are locked cannot change, so the same ones). No row objects are made for what goes.
* A failed check rolls back; the batch is then deleted exactly by (id, status, date_done).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from celery_archive.backends import PurgeBatch
from celery_archive.backends.sql.dates import FINISHED
from celery_archive.backends.sql.driver import driver_rows, text_or_bytes, texts, undecodable
from celery_archive.backends.sql.keys import in_shard
from celery_archive.errors import SourceError

if TYPE_CHECKING:
    from celery_archive.backends.sql.source import SqlSource

EXACT_CHUNK = 1000  # rows per exact DELETE ... WHERE (id, status, date_done) IN (...)
SQLITE_CACHE_KIB = 32 * 1024  # SQLite's page cache while it deletes (its default, 2 MiB, makes a 50,000-row DELETE ~1.6x slower)


def purge(src: SqlSource, batch: PurgeBatch) -> tuple[int, int]:
    """(deleted, skipped as changed) of ``batch``."""
    table = src.tables[batch.kind]
    total = batch.table.num_rows
    batch = as_stored(src, batch)
    try:
        deleted: int | None = None
        if src.dialect.name in ("sqlite", "mysql", "mariadb") and not src._adbc_uri:
            deleted = _locked_delete(src, batch, table)
        elif src._adbc_uri or src.engine.dialect.delete_returning:
            deleted = _returning_delete(src, batch, table)
        if deleted is None:
            deleted = _exact_delete(src, batch, table)
    except Exception as exc:
        if isinstance(exc, SourceError):
            raise
        raise src._error("deleting archived results from", exc) from exc
    return deleted, total - deleted


def as_stored(src: SqlSource, batch: PurgeBatch) -> PurgeBatch:
    """The batch with date_done as stored (raw_date_done, typed as the database compares
    it; from date_done for v1 records), in stored order."""
    t = batch.table
    if "date_done" not in t.column_names:
        return batch
    t = t.set_column(t.schema.get_field_index("date_done"), "date_done", src.dates.typed(t, batch.kind))
    if "raw_date_done" in t.column_names:
        t = t.drop_columns(["raw_date_done"])
    return PurgeBatch(batch.kind, t.sort_by([("date_done", "ascending"), ("source_id", "ascending")]))


def _in_range(src: SqlSource, batch: PurgeBatch, table: sa.Table, ids: bool = False) -> list[sa.ColumnElement[bool]]:
    """The batch's key range (and the selection's other conditions on what may go); with
    ``ids`` also within its smallest and largest id, which only narrows what may go and lets
    SQLite and MySQL scan (and lock) the primary key's range instead of all of the table."""
    key = sa.tuple_(table.c.date_done, table.c.id)
    lo, hi = batch.bounds()  # the batch is sorted by (date_done, id): these bound all of it
    conds = [key >= sa.tuple_(*lo), key <= sa.tuple_(*hi), *in_shard(src.shard, batch.kind, table)]
    if ids:
        least, most = pc.min_max(batch.table["source_id"]).values()
        conds += [table.c.id >= least.as_py(), table.c.id <= most.as_py(), table.c.date_done >= lo[0], table.c.date_done <= hi[0]]
    if batch.kind == "task":
        conds.append(table.c.status.in_(FINISHED))
    return conds


def _key_columns(batch: PurgeBatch, table: sa.Table, text: bool) -> list[sa.ColumnElement[Any]]:
    """The columns a row is checked by, in the batch's order; date_done as text on MySQL (its
    driver's datetimes cost more than the check), cast back to the batch's type in Arrow."""
    return [table.c.id if k == "source_id" else sa.cast(table.c[k], sa.String()) if k == "date_done" and text else table.c[k]
            for k in batch.keys]


def _returning_delete(src: SqlSource, batch: PurgeBatch, table: sa.Table) -> int | None:
    stmt = sa.delete(table).where(*_in_range(src, batch, table)).returning(
        *(table.c.id.label("source_id") if k == "source_id" else table.c[k] for k in batch.keys))
    if src._adbc_uri:
        with src._adbc() as conn:
            try:
                got = src._query(stmt, conn)
                if batch.outside(got) == 0:
                    conn.commit()
                    return len(next(iter(got.values()), []))
            except BaseException:
                conn.rollback()
                raise
            conn.rollback()  # something not verified (new or changed) is in range
        return None
    with src.engine.connect() as sconn, sconn.begin() as tx:
        got = src._query(stmt, sconn)
        if batch.outside(got) == 0:
            return len(next(iter(got.values()), []))
        tx.rollback()  # something not verified (new or changed) is in range
    return None


def _locked_delete(src: SqlSource, batch: PurgeBatch, table: sa.Table) -> int | None:
    conds = _in_range(src, batch, table, ids=True)
    sqlite = src.dialect.name == "sqlite"
    with src.engine.connect() as conn:
        driver: Any = conn.connection.driver_connection
        cache = driver.execute("PRAGMA cache_size").fetchone()[0] if sqlite else None
        try:
            if sqlite:
                driver.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            with conn.begin() as tx:
                if sqlite:  # no other writer from here to the commit (readers go on reading)
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                got = _sqlite_keys(conn, batch, table, conds) if sqlite else _mysql_keys(conn, batch, table, conds)
                n = len(next(iter(got.values()))) if got else 0
                if got is None or batch.outside(got) != 0:
                    tx.rollback()  # something not verified (new or changed) is in range
                    return None
                deleted = int(conn.execute(sa.delete(table).where(*conds)).rowcount)
                if deleted != n:  # not what was checked (a row added since, under READ COMMITTED)
                    tx.rollback()
                    return None
            return deleted
        finally:
            if cache is not None:
                driver.execute(f"PRAGMA cache_size = {int(cache)}")


def _sqlite_keys(conn: sa.Connection, batch: PurgeBatch, table: sa.Table, conds: list[sa.ColumnElement[bool]]) -> dict[str, Any]:
    """The keys of the range's rows, as the driver's tuples (SQLite's are cheap to make)."""
    stmt = sa.select(*_key_columns(batch, table, False)).where(*conds)
    try:
        rows = driver_rows(conn, stmt)
    except Exception as exc:  # text that is not UTF-8 in the range (sqlite3 refuses it): as its bytes, then no match
        if not undecodable(exc):
            raise
        with texts(conn, text_or_bytes):
            rows = driver_rows(conn, stmt)
    return dict(zip(batch.keys, zip(*rows))) if rows else {}


def _mysql_keys(conn: sa.Connection, batch: PurgeBatch, table: sa.Table, conds: list[sa.ColumnElement[bool]]) -> dict[str, Any] | None:
    """The keys of the range's rows, locked (FOR UPDATE), read as one text (GROUP_CONCAT of
    ``id|status|date_done``) that Arrow parses: PyMySQL parses a row at a time in Python.
    None if the range holds more rows than the batch (the check cannot pass)."""
    conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {batch.table.num_rows * 96 + 1024}")
    keys = _key_columns(batch, table, True)  # ids, status names (FINISHED) and dates: no "|" or ","
    count, text = conn.execute(sa.select(sa.func.count(), sa.func.group_concat(sa.func.concat_ws("|", *keys)))
                               .where(*conds).with_for_update()).one()
    if count > batch.table.num_rows:
        return None
    if not count:
        return {}
    types = {k: pa.int64() if k == "source_id" else pa.string() for k in batch.keys}
    got = _parsed_keys(text, batch.keys, types)
    if got is None or got.num_rows != count:  # NULL or cut short (max_allowed_packet): row by row instead
        rows = driver_rows(conn, sa.select(*keys).where(*conds).with_for_update())
        return {k: pa.array(v, types[k]) for k, v in zip(batch.keys, zip(*rows))} if rows else {}
    return {k: got[k] for k in batch.keys}


def _parsed_keys(text: str | bytes | None, names: list[str], types: dict[str, pa.DataType]) -> pa.Table | None:
    import pyarrow.csv as csv

    if not text:
        return None
    data = (text if isinstance(text, bytes) else text.encode()).replace(b",", b"\n")
    try:
        return csv.read_csv(pa.py_buffer(data), csv.ReadOptions(column_names=names),
                            csv.ParseOptions(delimiter="|", quote_char=False), csv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid:
        return None


def _exact_delete(src: SqlSource, batch: PurgeBatch, table: sa.Table) -> int:
    values = sorted(batch.values(), key=lambda v: v[0])
    key = sa.tuple_(*(table.c[k if k != "source_id" else "id"] for k in batch.keys))
    deleted = 0
    with src.engine.begin() as conn:
        for i in range(0, len(values), EXACT_CHUNK):
            deleted += conn.execute(sa.delete(table).where(key.in_(values[i : i + EXACT_CHUNK]))).rowcount
    return deleted
