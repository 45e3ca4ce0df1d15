"""django-celery-results as a source: rows written by the real django-celery-results backend
(a minimal Django project, its migrations applied), archived, purged and restored on SQLite,
PostgreSQL and MariaDB, read back with AsyncResult inside the Django project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import ROOT, celery_app, cli, reset_database

HELPER = ROOT / "tests" / "django_results.py"
IDS = ["ok-0", "ok-1", "ok-6", "fail-0", "revoked-0", "grp-0"]


def django(db: str, *args: str, serializer: str = "json") -> str:
    proc = subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CA_DJANGO_DB": db, "CA_SERIALIZER": serializer})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def seen(db: str, ids: list[str], serializer: str = "json") -> dict[str, Any]:
    """What AsyncResult (and the row) shows for each id, inside the Django project."""
    out: dict[str, Any] = json.loads(django(db, "get", *ids, serializer=serializer))
    return out


def rows(db: str, table: str = "django_celery_results_taskresult") -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        key = "task_id" if table.endswith("taskresult") else "group_id"
        got = {r[key]: dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")).mappings()}
    engine.dispose()
    return got


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def django_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of a fresh Django database with django-celery-results migrated."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'django.db'}"
    else:
        db = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")
        reset_database(db)  # the server's test database is shared by the session
    django(db, "migrate")
    return db


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_archive_purge_restore(django_db: str, serializer: str, tmp_path: Path) -> None:
    db = django_db
    django(db, "write", serializer=serializer)
    django(db, "age", "40", "ok-7", "running-0", serializer=serializer)  # ok-7 stays recent
    before = seen(db, IDS, serializer)
    before_rows = rows(db)
    assert before["ok-1"]["state"] == "SUCCESS" and before["fail-0"]["state"] == "FAILURE"
    if serializer == "pickle":
        assert before_rows["ok-1"]["content_encoding"] == "binary"  # base64 of the pickle

    source = "django+" + db
    sink = str(tmp_path / "archive")
    proc = cli("run", "--source", source, "--sink", sink, "--older-than", "30d", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["by_status"] == {"SUCCESS": 7, "FAILURE": 1, "REVOKED": 1, "(group)": 1} and plan["by_name"]["shop.checkout"] == 7
    proc = cli("run", "--source", source, "--sink", sink, "--older-than", "30d", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # 7 old successes, a failure, a revoked task and a group; not ok-7 (recent), not running-0 (unfinished)
    assert (report["selected"], report["verified"], report["deleted"]) == (10, 10, 10)
    assert set(rows(db)) == {"ok-7", "running-0"} and rows(db, "django_celery_results_groupresult") == {}
    assert "password" not in proc.stdout

    # the queryable copy is decoded from the row's own content type and encoding
    import pyarrow.dataset as ds

    table = ds.dataset(f"{sink}/data", format="parquet", partitioning="hive").to_table()
    recs = {r["task_id"]: r for r in table.to_pylist()}
    assert json.loads(recs["ok-1"]["result"]) == {"n": 1, "at": "2026-03-04T05:06:07", "items": [1, 2, 3]}
    assert recs["ok-1"]["name"] == "shop.checkout" and recs["ok-1"]["worker"] == "worker1@host"
    assert recs["ok-1"]["storage_format"] == "django-celery-results" and recs["ok-1"]["decode_error"] is None
    assert recs["grp-0"]["kind"] == "group" and json.loads(recs["grp-0"]["result"])[0] == ["grp-0", None]
    assert json.loads(recs["fail-0"]["result"])["exc_type"] == "ValueError"

    proc = cli("restore", "ok-1", "--sink", sink, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "SUCCESS"
    proc = cli("restore", *IDS, "--sink", sink, "--into", source, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["restored"] == len(IDS)
    after = seen(db, IDS, serializer)
    assert after == before  # state, result, args, kwargs, worker, date_done, traceback, the whole row
    restored = rows(db)
    for tid in IDS[:-1]:
        assert {k: v for k, v in restored[tid].items() if k != "id"} == {k: v for k, v in before_rows[tid].items() if k != "id"}

    # a Django row does not go into Celery's own tables
    celery_db = f"db+sqlite:///{tmp_path / 'celery.db'}"
    celery_app(celery_db).backend.store_result("other", 1, "SUCCESS")  # Celery makes its tables
    proc = cli("restore", "ok-1", "--sink", sink, "--into", celery_db)
    assert proc.returncode == 1 and "go back only into a django+ target" in proc.stderr, proc.stderr
    # a second restore leaves them (skip), or refuses (fail, exit 6)
    proc = cli("restore", "ok-1", "--sink", sink, "--into", source, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["skipped"] == 1
    proc = cli("restore", "ok-1", "--sink", sink, "--into", source, "--on-conflict", "fail")
    assert proc.returncode == 6


def test_only_unchanged_rows_are_purged(django_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result stored again between extract and purge (a retried task) is kept."""
    from helpers import after_extract

    from celery_archive import RunConfig, parse_duration, run

    db = django_db
    django(db, "write")
    django(db, "age", "40", "running-0")
    after_extract(monkeypatch, lambda: django(db, "store", "fail-0"))  # re-run: new status, new date_done
    report = run(RunConfig(source="django+" + db, sink=str(tmp_path / "archive"), older_than=parse_duration("30d")))
    assert (report.verified, report.deleted, report.skipped_changed) == (11, 10, 1)  # 8 ok, fail, revoked, group
    assert set(rows(db)) == {"fail-0", "running-0"}
    assert seen(db, ["fail-0"])["fail-0"]["result"] == "fixed on retry"


def test_bad_django_urls_are_named(tmp_path: Path) -> None:
    proc = cli("run", "--source", f"django+sqlite:///{tmp_path / 'nothing.db'}", "--sink", str(tmp_path / "a"), "--older-than", "30d")
    assert proc.returncode == 2 and "no SQLite database file" in proc.stderr
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    proc = cli("run", "--source", f"django+sqlite:///{empty}", "--sink", str(tmp_path / "a"), "--older-than", "30d")
    assert proc.returncode == 1 and "django_celery_results_taskresult not found" in proc.stderr and "migrate" in proc.stderr


def test_a_django_row_of_the_wrong_type_is_left_and_named(tmp_path: Path) -> None:
    """SQLite stores bytes in django-celery-results' text columns if something puts them there;
    such a row stays where it is, named, and the rest is archived and purged."""
    import sqlite3

    db = f"sqlite:///{tmp_path / 'django.db'}"
    django(db, "migrate")
    django(db, "write")
    django(db, "age", "40", "running-0")
    with sqlite3.connect(tmp_path / "django.db") as c:
        c.execute("UPDATE django_celery_results_taskresult SET result = x'7b7d' WHERE task_id = 'ok-1'")  # '{}', as bytes
        c.execute("UPDATE django_celery_results_taskresult SET task_name = x'ff' WHERE task_id = 'ok-2'")
    proc = cli("run", "--source", "django+" + db, "--sink", str(tmp_path / "archive"), "--older-than", "30d", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["source_counts"] == {"malformed": 2} and report["deleted"] == report["archived"] == 9
    assert any("result is bytes" in e for e in report["source_examples"]["malformed"])
    assert set(rows(db)) == {"ok-1", "ok-2", "running-0"}
