"""SQLite pages read as Arrow columns (ADBC's SQLite driver), for what Python's sqlite3 module
spends most of a run on: a Python object per value, then an Arrow array made of them.

SQLite stores any value in any column, and ADBC's driver types a column by the values it sees
first, converting the rest without a word (text in a BLOB column comes back as its bytes, a
number in a text column as its digits). So a page is taken from ADBC only when every value is
of the storage class its column is declared with (``typeof()``, checked by SQLite in the same
query) and text is valid UTF-8; a page with anything else, or one ADBC refuses, is read again
through the DB-API driver (None here), where such values are handled as they always were. The
values of a page taken here are then exactly the driver's: bytes, text and integers.

No transaction is held between pages: each page is one statement on a connection of its own,
closed at once, so the purge's ``BEGIN IMMEDIATE`` never waits on a reader.

ADBC's driver links a copy of SQLite of its own, and closing a connection drops every POSIX lock
its process holds on the file, those of Python's sqlite3 module too. So this reads only where no
other connection of the process can hold a lock on the file meanwhile: a run's extraction, which
ends before its purge begins, in a process of celery-archive's own, whose sqlite3 connections are
not pooled (source.py: none stays open to hold WAL's shared wal-index lock either). A Celery worker (tasks.py)
may write results to the same file on another thread: there ``ALLOWED`` is False and pages go
through sqlite3. The purge always does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from celery_archive.backends.records import RAW_TYPES

_CLASSES = ((sa.LargeBinary, "blob", pa.binary()), (sa.Integer, "integer", pa.int64()), (sa.String, "text", pa.string()))
OK = "celery_archive_types_ok"  # the query's extra column: 1 where every value is of its column's class


ALLOWED = True  # False in a process whose other code may hold SQLite locks (a Celery worker: tasks.py)


def available() -> bool:
    if not ALLOWED:
        return False
    try:
        import adbc_driver_sqlite  # noqa: F401
    except ImportError:
        return False
    return True


def uri(path: str) -> str:
    """The SQLite URI of the very file SQLAlchemy opens for ``path`` (a file name, relative to
    the working directory), read-only: ADBC's driver takes a name starting ``file:`` as a URI
    of its own (``file:z.db`` is ./z.db to it, ./file:z.db to SQLAlchemy), and would create a
    missing file."""
    import os
    from urllib.parse import quote

    return "file:" + quote(os.path.abspath(path)) + "?mode=ro"


def storage_class(column: sa.ColumnElement[Any]) -> tuple[str, pa.DataType] | None:
    """The SQLite storage class a Celery column holds (and its Arrow type), by its declared type."""
    for sa_type, name, arrow in _CLASSES:
        if isinstance(column.type, sa_type):
            return name, arrow
    return None


def checked(stmt: sa.Select[Any]) -> sa.Select[Any] | None:
    """``stmt`` with the OK column, or None if a column's storage class is not known."""
    conds = []
    for col in stmt.selected_columns:
        cls = storage_class(col)
        if cls is None:
            return None
        conds.append(sa.func.typeof(col).in_([cls[0], "null"]))
    return stmt.add_columns(sa.case((sa.and_(*conds), 1), else_=0).label(OK))


_STORAGE = {pa.string().id: "text", pa.binary().id: "blob", pa.int64().id: "integer", pa.int32().id: "integer"}


def sound(table: sa.Table, names: list[str], types: Mapping[str, pa.DataType]) -> sa.ColumnElement[bool]:
    """SQL true where a row's ``names`` columns each hold what ``types`` says Celery writes
    there (the storage class, NULL, an int32 in its range), as a run's malformed check
    (records.malformed) decides in Python; text that is not UTF-8 it cannot tell."""
    conds: list[sa.ColumnElement[bool]] = []
    for name in names:
        target = types.get(name)
        cls = None if target is None or name == "date_done" else _STORAGE.get(target.id)
        if cls is None:
            continue
        col = table.c[name]
        conds.append(sa.func.typeof(col).in_([cls, "null"]))
        if target == pa.int32():
            conds.append(sa.or_(col.is_(None), col.between(-(2**31), 2**31 - 1)))
    return sa.and_(sa.true(), *conds)


def read(path: str, sql: str, stmt: sa.Select[Any]) -> dict[str, Any] | None:
    """The page ``sql`` (``checked(stmt)``, compiled) selects, its columns by name as Arrow
    arrays; {} if it has no rows; None if it must be read through the DB-API driver instead."""
    import adbc_driver_manager as m
    import adbc_driver_sqlite

    try:
        db = adbc_driver_sqlite.connect(uri(path))
        try:
            conn = m.AdbcConnection(db)
            try:
                query = m.AdbcStatement(conn)
                try:
                    query.set_sql_query(sql)
                    stream, _ = query.execute_query()
                    table = pa.RecordBatchReader._import_from_c(stream.address).read_all()
                finally:
                    query.close()
            finally:
                conn.close()
        finally:
            db.close()
    except (m.Error, OSError, pa.ArrowException):  # the stream's errors come as OSError
        return None  # a value of another type than the ones before it in ADBC's batch, and the like
    if not table.num_rows:
        return {}
    ok = table.column(OK)
    if ok.null_count or not all(v == 1 for v in ok.unique().to_pylist()):
        return None
    out: dict[str, Any] = {}
    for col in stmt.selected_columns:
        values = table.column(col.name).combine_chunks()
        cls = storage_class(col)
        assert cls is not None  # checked() took only known classes
        if values.null_count == len(values):
            values = pa.nulls(len(values), cls[1])  # no value to type it by: ADBC says int64
        elif values.type != cls[1]:
            return None
        try:
            values.validate(full=True)  # text that is not UTF-8 (the driver refuses it)
            if col.name in RAW_TYPES:
                values.cast(RAW_TYPES[col.name])  # a number too large for its column (retries: int32)
        except pa.ArrowException:
            return None
        out[col.name] = values
    return out
