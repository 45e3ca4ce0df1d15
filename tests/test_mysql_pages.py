"""MySQL/MariaDB pages read as Arrow columns through ConnectorX (backends/sql/mysql_arrow.py)
give the archive PyMySQL gives, byte for byte, and a page ConnectorX cannot give as its
columns' types (or a URL it cannot express) is read by PyMySQL instead."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa
from conftest import MYSQL_ADMIN, _fresh_database, age_rows, celery_app, reset_database
from helpers import counted_pages

from celery_archive.backends.sql import mysql_arrow
from celery_archive.backends.sql.source import SqlSource
from celery_archive.config import RunConfig
from celery_archive.pipeline.run import run


def _records(sink: Path) -> pa.Table:
    files = [str(p) for p in sorted((sink / "data").rglob("*.parquet"))]
    table = ds.dataset(files, format="parquet", partitioning="hive", partition_base_dir=str(sink / "data")).to_table()
    return table.drop_columns(["run_id", "archived_at", "source"]).sort_by("task_id")


def _write(url: str) -> None:
    app = celery_app("db+" + url)
    for i in range(1500):
        app.backend.store_result(f"ok-{i:05d}", {"i": i, "text": "ünïcode ☃ \"q\" \\ \n" * (i % 4)}, "SUCCESS")
    try:
        raise ValueError("card declined ☃")
    except ValueError as exc:
        app.backend.mark_as_failure("fail-0", exc, traceback="Traceback (most recent call last):\n  ValueError: ☃\n")
    app.backend.mark_as_revoked("revoked-0", "terminated")
    app.backend.save_group("group-0", app.GroupResult("group-0", [app.AsyncResult("ok-00001")]))
    app.backend.store_result("running-0", None, "STARTED")
    app.backend.ResultSession().get_bind().dispose()
    age_rows("db+" + url, 40)
    age_rows("db+" + url, 40, table="celery_tasksetmeta")
    engine = sa.create_engine(url)
    with engine.begin() as c:  # MySQL's zero date, which no driver reads as a date: left alone either way
        c.exec_driver_sql("SET SESSION sql_mode = ''")
        c.exec_driver_sql("UPDATE celery_taskmeta SET date_done = '0000-00-00 00:00:00' WHERE task_id = 'ok-00003'")
        c.exec_driver_sql("UPDATE celery_taskmeta SET name = NULL, worker = NULL WHERE task_id >= 'ok-01000'")
    engine.dispose()


def _copy(src: str, dst: str) -> None:
    engine = sa.create_engine(MYSQL_ADMIN)
    a, b = sa.make_url(src).database, sa.make_url(dst).database
    with engine.begin() as c:
        for t in ("celery_taskmeta", "celery_tasksetmeta"):
            c.exec_driver_sql(f"CREATE TABLE {b}.{t} LIKE {a}.{t}")
            c.exec_driver_sql(f"INSERT INTO {b}.{t} SELECT * FROM {a}.{t}")
    engine.dispose()


def test_connectorx_pages_archive_what_pymysql_gives(mysql_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mysql_arrow.available(), "ConnectorX is missing: `pip install -e '.[test]'` installs it"
    reset_database(mysql_url)
    _write(mysql_url)
    pages = counted_pages(monkeypatch, mysql_arrow)
    now = dt.datetime.now(dt.timezone.utc)
    reports = []
    other = _fresh_database(MYSQL_ADMIN)
    copy = next(other)
    try:
        _copy(mysql_url, copy)
        for name, url in (("arrow", mysql_url), ("driver", copy)):
            if name == "driver":
                monkeypatch.setattr(SqlSource, "arrow_pages", False)
            reports.append(run(RunConfig(source="db+" + url, sink=str(tmp_path / name), older_than=dt.timedelta(days=30),
                                         batch_size=400), now=now))
            with sa.create_engine(url).connect() as c:
                left = {t for (t,) in c.exec_driver_sql("SELECT task_id FROM celery_taskmeta")}
            assert left == {"ok-00003", "running-0"}  # the zero date and the unfinished one stay
    finally:
        next(other, None)
    assert pages["arrow"] >= 4 and pages["driver"] == 0  # every page by ConnectorX in the first run, none in the second
    for r in reports:
        assert r.archived == r.verified == r.deleted == 1500 - 1 + 2 + 1  # type: ignore[union-attr]
        assert r.source_counts == {"bad_date_done": 1}  # type: ignore[union-attr]
    a, b = _records(tmp_path / "arrow"), _records(tmp_path / "driver")
    assert a.num_rows == b.num_rows == reports[0].archived  # type: ignore[union-attr]
    for column in a.column_names:
        assert a[column].equals(b[column]), column
    by_id = {r["task_id"]: r for r in a.to_pylist()}
    assert "☃" in by_id["fail-0"]["traceback"] and by_id["ok-01001"]["name"] is None
    assert json.loads(by_id["ok-00002"]["result"]) == {"i": 2, "text": "ünïcode ☃ \"q\" \\ \n" * 2}


def test_a_url_connectorx_cannot_express_is_read_by_the_driver() -> None:
    """Options in the URL's query (a socket, SSL, a charset) are the DB-API driver's to honour."""
    assert mysql_arrow.uri(sa.make_url("mysql+pymysql://root@127.0.0.1/test?unix_socket=/run/x.sock")) is None
    assert mysql_arrow.uri(sa.make_url("postgresql://u@h/db")) is None
    got = mysql_arrow.uri(sa.make_url("mysql+pymysql://us%40r:p%3Aw%2Fd@db.example:3307/results"))
    assert got == "mysql://us%40r:p%3Aw%2Fd@db.example:3307/results"
    page = mysql_arrow.read("mysql://nobody:wrong@127.0.0.1:1/none", "SELECT 1 AS id", sa.select(sa.literal(1).label("id")))
    assert page is None  # an error: the driver reads it (and says what is wrong)
