"""What DB-API drivers give, and how celery-archive takes it: a statement's rows as the driver's
own tuples, MySQL's DATETIME text as Arrow timestamps, and SQLite text that is not UTF-8 (which
Python's sqlite3 module refuses) as its bytes, or shown escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import sqlalchemy as sa


def driver_rows(conn: sa.Connection, stmt: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``stmt`` as the DB-API driver's tuples (SQLAlchemy binds the parameters
    but makes no Row object per row)."""
    result = conn.execute(stmt)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def undecodable(exc: Exception) -> bool:
    """Whether Python's sqlite3 module refused a text value that is not UTF-8 (SQLite keeps any bytes as text)."""
    return "Could not decode to UTF-8" in str(exc)


def text_or_bytes(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def shown_text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


@contextmanager
def texts(conn: sa.Connection, factory: Any) -> Iterator[None]:
    """On SQLite, text values read on ``conn`` made by ``factory`` (sqlite3's text_factory) meanwhile."""
    driver: Any = conn.connection.driver_connection
    if not hasattr(driver, "text_factory"):
        yield
        return
    before = driver.text_factory
    driver.text_factory = factory
    try:
        yield
    finally:
        driver.text_factory = before


def timestamps(texts: Any) -> Any:
    """MySQL's text of DATETIME values as an Arrow timestamp array, as ADBC gives them; values
    Arrow cannot read (a zero date) as datetimes, or as the text, as the driver would give them."""
    arrow = isinstance(texts, pa.Array)
    try:
        return (texts if arrow else pa.array(texts, pa.string())).cast(pa.timestamp("us"))
    except pa.ArrowInvalid:
        return [_parsed(v) for v in (texts.to_pylist() if arrow else texts)]


def _parsed(text: str | None) -> dt.datetime | str | None:
    try:
        return None if text is None else dt.datetime.fromisoformat(text)
    except ValueError:
        return text
