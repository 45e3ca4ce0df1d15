"""PostgreSQL through ADBC's low-level API: the COPY-speed Arrow reads the SQL source needs.

Not the DB-API module (``adbc_driver_postgresql.dbapi``): that one imports polars and
pyarrow.dataset whenever they are installed, which a lookup or a nightly run never uses. This
wraps just what the source does (a query read as one Arrow table, commit, rollback, a table's
schema); every call runs in a transaction of its own that the caller ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa


class Connection:
    """One ADBC connection, autocommit off (reads and deletes end with commit or rollback)."""

    def __init__(self, uri: str) -> None:
        import adbc_driver_manager as m
        import adbc_driver_postgresql

        self._m = m
        self._db = adbc_driver_postgresql.connect(uri)
        try:
            self._conn = m.AdbcConnection(self._db)
            self._conn.set_autocommit(False)
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def cursor(self) -> Iterator[Connection]:
        """For code written against a DB-API cursor: the connection itself executes."""
        yield self

    def execute(self, sql: str) -> None:
        self._last = self._run(sql)

    def fetch_arrow_table(self) -> pa.Table:
        return self._last

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._last.to_pylist()
        return tuple(rows[0].values()) if rows else None

    def _run(self, sql: str) -> pa.Table:
        stmt = self._m.AdbcStatement(self._conn)
        try:
            stmt.set_sql_query(sql)
            stream, _ = stmt.execute_query()
            return pa.RecordBatchReader._import_from_c(stream.address).read_all()
        finally:
            stmt.close()

    def adbc_get_table_schema(self, name: str, db_schema_filter: str | None = None) -> pa.Schema:
        handle = self._conn.get_table_schema(None, db_schema_filter, name)
        return pa.Schema._import_from_c(handle.address)

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._db.close()


def connect(uri: str) -> Connection:
    return Connection(uri)
