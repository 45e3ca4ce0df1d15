"""MySQL and MariaDB pages read as Arrow columns through ConnectorX (the ``mysql`` extra), for
what a pure-Python driver spends most of a run on: PyMySQL parses every value of every row in
Python (~1.3 s of client CPU for 200,000 rows; ConnectorX ~0.3 s).

Only reads go this way: each page is one statement on a connection of ConnectorX's own, with no
transaction held between pages, as PyMySQL reads them (autocommit); the purge's locking reads
and deletes stay on the URL's own driver. A page is taken only when each column comes back as
the Arrow type its Celery column is read as (texts as text, bytes as bytes, integers); for a
URL ConnectorX cannot express (a socket, driver options in its query), a page it refuses, or
anything else unexpected, the page is read through the DB-API driver as before (None here).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pyarrow as pa
import sqlalchemy as sa

from celery_archive.backends.sql.sqlite_arrow import storage_class


def available() -> bool:
    try:
        import connectorx  # noqa: F401
    except ImportError:
        return False
    return True


def uri(url: sa.URL) -> str | None:
    """ConnectorX's URL of the same server, user and database, or None where it cannot say
    what the source URL says (query options such as a socket, SSL or a charset)."""
    if url.get_backend_name() not in ("mysql", "mariadb") or url.query or not url.host or not url.database:
        return None
    if not available():
        return None
    auth = quote(url.username or "", safe="") + (":" + quote(url.password, safe="") if url.password else "")
    return f"mysql://{auth}@{url.host}:{url.port or 3306}/{quote(url.database, safe='')}"


def read(uri: str, sql: str, stmt: sa.Select[Any]) -> dict[str, Any] | None:
    """The page ``sql`` (``stmt``, compiled) selects, its columns by name as Arrow arrays; {}
    if it has no rows; None if it must be read through the DB-API driver instead."""
    import connectorx

    try:
        table = connectorx.read_sql(uri, sql, return_type="arrow")
    except Exception:  # noqa: BLE001 - a page it refuses is read by the DB-API driver
        return None
    if not isinstance(table, pa.Table) or table.column_names != [c.name for c in stmt.selected_columns]:
        return None
    if not table.num_rows:
        return {}
    out: dict[str, Any] = {}
    for col in stmt.selected_columns:
        cls = storage_class(col)
        if cls is None:
            return None
        try:
            values, want = table.column(col.name).combine_chunks(), cls[1]
            if values.null_count == len(values):
                values = pa.nulls(len(values), want)
            elif _FAMILY.get(values.type.id) != _FAMILY[want.id]:
                return None  # another type than the column's (a DATETIME not read as text, say)
            out[col.name] = values.cast(want)
        except pa.ArrowException:  # a page's bytes beyond 2 GiB for one array, say
            return None
    return out


_FAMILY = {**{t.id: "bytes" for t in (pa.binary(), pa.large_binary())}, **{t.id: "text" for t in (pa.string(), pa.large_string())},
           **{t.id: "int" for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())}}
