"""Celery ``db+...`` result_backend URLs: parsing, drivers, the ADBC URI, redaction."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from celery_archive.errors import ConfigError

# PostgreSQL sessions in UTC: naive UTC datetimes compare right with timestamptz columns
# (django-celery-results) whatever the server's TimeZone; Celery's own columns have no zone.
UTC_SESSION = {"options": "-ctimezone=UTC"}


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def parse_source_url(url: str) -> sa.URL:
    """The SQLAlchemy URL inside a Celery ``db+...`` result_backend URL."""
    if not url.startswith("db+"):
        raise ConfigError(f"not a Celery database backend URL: {redact(url)!r} (expected db+postgresql://, db+mysql://, db+sqlite:///...)")
    try:
        u = sa.make_url(url[3:])
    except sa.exc.ArgumentError:
        # not chained: the cause would repeat the URL, password included
        raise ConfigError("cannot parse the --source URL; expected e.g. db+postgresql+psycopg://user@host/db") from None
    if u.drivername == "postgresql" and not _module_available("psycopg2"):
        u = u.set(drivername="postgresql+psycopg")
    if u.drivername == "mysql" and not _module_available("MySQLdb"):
        u = u.set(drivername="mysql+pymysql")
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(u.database).is_file():
            raise ConfigError(f"no SQLite database file at {u.database}: check the path in --source (db+sqlite:///relative or db+sqlite:////absolute)")
    try:
        dialect = u.get_dialect()
        if adbc_uri(u) is None:  # on PostgreSQL, ADBC does the work: the driver loads only if needed
            dialect.import_dbapi()
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"no database driver for {u.drivername!r}: install it (for example `pip install psycopg` or `pip install pymysql`)") from exc
    return u


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    prefix = "db+" if url.startswith("db+") else ""
    try:
        return prefix + sa.make_url(url[len(prefix):]).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def adbc_uri(url: sa.URL) -> str | None:
    """A libpq URI for ADBC when the source is PostgreSQL and the ADBC driver is installed."""
    if url.get_backend_name() != "postgresql" or not _module_available("adbc_driver_postgresql"):
        return None
    return url.set(drivername="postgresql").update_query_dict(UTC_SESSION).render_as_string(hide_password=False)


def session_zone(url: sa.URL, adbc: bool) -> tuple[str, Any]:
    """PostgreSQL's TimeZone in a session as Celery's own connections get it (the database or
    role default, or the URL's own options), where celery-archive's sessions run in UTC; with
    ADBC, also the connection it was read on, set to UTC since (for the source to keep)."""
    query = "SELECT current_setting('TimeZone')"
    if adbc:
        from celery_archive.backends.sql.adbc import connect

        conn = connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                row = cur.fetchone()
                cur.execute("SET TIME ZONE 'UTC'")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return (str(row[0]) if row else "UTC"), conn
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as c:
            row = c.exec_driver_sql(query).one()
    finally:
        engine.dispose()
    return str(row[0]), None
