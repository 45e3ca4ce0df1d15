"""Stored values compared and paged exactly as stored (issue 14, item 3), rows without a task id
(issue 14, item 4, SQL), restore putting the stored date_done back, and Redis keys of Celery
5.3/5.4's prefix layout (issue 15, part 3): on real servers, with results Celery wrote."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from conftest import age_rows, celery_app, cli, db_url, reset_database, run_celery
from helpers import REDIS_URL, read_archive, utc
from test_time import pg_new_york, stored_texts, write  # noqa: F401 - pg_new_york is a fixture

UTC = dt.timezone.utc
FORMS = (  # how other tools write aware datetimes into date_done; the last one is Celery's own
    lambda t: t.strftime("%Y-%m-%d %H:%M:%S+00:00"),
    lambda t: (t + dt.timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S.%f+02:00"),
    lambda t: (t - dt.timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "-05:00",
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"),
    lambda t: (t + dt.timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S+0200"),  # SQLite's own date functions cannot read it
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
    lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f"),
)


def odd_sqlite(tmp_path: Path, n: int = 1400) -> tuple[str, dict[str, dt.datetime], dict[str, str]]:
    """A SQLite backend of ``n`` results Celery wrote, their date_done then rewritten by another
    tool in each of FORMS, spread over three hours: (url, task id -> instant, -> stored text)."""
    url = f"db+sqlite:///{tmp_path / 'r.db'}"
    app = celery_app(url)
    for i in range(20):
        app.backend.store_result(f"c{i}", {"i": i}, "SUCCESS")
    engine = sa.create_engine(url[3:])
    now = dt.datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as c:
        cols = "status, result, traceback, name, args, kwargs, worker, retries, queue, children, stamps"
        c.exec_driver_sql(f"WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {n // 20 - 1}) "
                          f"INSERT INTO celery_taskmeta (task_id, {cols}, date_done) SELECT task_id || '-' || n, {cols}, date_done "
                          "FROM celery_taskmeta, k")
        ids = [r[0] for r in c.exec_driver_sql("SELECT task_id FROM celery_taskmeta ORDER BY id")]
        instants = {tid: now - dt.timedelta(minutes=(i * 7) % 180, microseconds=i) for i, tid in enumerate(ids)}
        texts = {tid: FORMS[i % len(FORMS)](instants[tid]) for i, tid in enumerate(ids)}
        c.execute(sa.text("UPDATE celery_taskmeta SET date_done = :d WHERE task_id = :t"), [{"d": d, "t": t} for t, d in texts.items()])
    engine.dispose()
    # the stored text keeps as much of the instant as its form has (no fraction, milliseconds)
    parsed = {t: dt.datetime.fromisoformat(v) for t, v in texts.items()}
    kept = {t: p.astimezone(UTC).replace(tzinfo=None) if p.tzinfo else p for t, p in parsed.items()}
    return url, kept, texts


def test_odd_sqlite_text_is_archived_once_and_purged(tmp_path: Path) -> None:
    url, instants, texts = odd_sqlite(tmp_path)
    sink = str(tmp_path / "a")
    cutoff = dt.datetime.now(UTC).replace(tzinfo=None) - dt.timedelta(hours=1)
    old = {t for t, at in instants.items() if at < cutoff - dt.timedelta(seconds=30)}
    fresh = {t for t, at in instants.items() if at > cutoff + dt.timedelta(seconds=30)}

    first = cli("run", "--source", url, "--sink", sink, "--older-than", "1h", "--batch-size", "7", "--json", timeout=300)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    records = read_archive(tmp_path / "a")  # each task id once
    assert old <= set(records) and not fresh & set(records)
    assert report["selected"] == report["deleted"] == len(records) and report["skipped_changed"] == 0
    for tid, rec in records.items():
        assert rec["raw_date_done"] == texts[tid]
        assert utc(rec["date_done"]) == instants[tid].replace(tzinfo=UTC), (tid, texts[tid])
    remaining = stored_texts(url)
    assert set(remaining) == set(instants) - set(records) and fresh <= set(remaining)

    again = json.loads(cli("run", "--source", url, "--sink", sink, "--older-than", "1h", "--batch-size", "7", "--json").stdout)
    assert again["selected"] == 0 and again["deleted"] == 0


def test_odd_sqlite_text_kept_by_no_delete_is_not_archived_twice(tmp_path: Path) -> None:
    url, _instants, _texts = odd_sqlite(tmp_path, 280)
    sink = str(tmp_path / "a")
    kept = json.loads(cli("run", "--source", url, "--sink", sink, "--older-than", "1h", "--batch-size", "5", "--no-delete", "--json").stdout)
    assert kept["archived"] > 100 and kept["deleted"] == 0
    later = json.loads(cli("run", "--source", url, "--sink", sink, "--older-than", "1h", "--batch-size", "5", "--json").stdout)
    assert later["resumed"] and later["selected"] == 0 and later["skipped_changed"] == 0
    assert len(read_archive(tmp_path / "a")) == kept["archived"]  # none twice
    assert len(stored_texts(url)) == 280 - kept["archived"]


def test_a_row_without_a_task_id_is_counted_and_left(backend_url: str, tmp_path: Path) -> None:
    app = celery_app(backend_url)
    for i in range(5):
        app.backend.store_result(f"ok-{i}", i, "SUCCESS")
    age_rows(backend_url, 40)
    engine = sa.create_engine(backend_url[3:])
    with engine.begin() as c:  # what a hand-made fix or another tool leaves behind
        c.exec_driver_sql("UPDATE celery_taskmeta SET task_id = NULL WHERE task_id = 'ok-2'")
        if engine.dialect.name == "sqlite":
            c.exec_driver_sql("UPDATE celery_taskmeta SET date_done = '2026-01-02 not a time' WHERE task_id = 'ok-4'")
        elif engine.dialect.name == "mysql":  # MySQL's zero date, which a server without NO_ZERO_DATE keeps
            c.exec_driver_sql("SET SESSION sql_mode = ''")
            c.exec_driver_sql("UPDATE celery_taskmeta SET date_done = '0000-00-00 00:00:00' WHERE task_id = 'ok-4'")
        else:  # PostgreSQL's -infinity, which no driver reads as a datetime (every run failed on it)
            c.exec_driver_sql("UPDATE celery_taskmeta SET date_done = '-infinity' WHERE task_id = 'ok-4'")
    engine.dispose()
    unreadable = {"ok-4"}
    dry = json.loads(cli("run", "--source", backend_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--dry-run",
                         "--json").stdout)
    assert dry["selected"] == 4 - len(unreadable)  # what the run then takes
    held = json.loads(cli("stats", "--source", backend_url, "--older-than", "30d", "--json").stdout)
    assert held["results"] == 5 and held["past_retention"] == 4 - len(unreadable)
    assert held["source_counts"].get("bad_date_done", 0) == len(unreadable)

    out = cli("run", "--source", backend_url, "--sink", str(tmp_path / "a"), "--older-than", "30d")
    assert out.returncode == 0, out.stderr
    assert "1 row(s) have no task id" in out.stdout and "first: celery_taskmeta id=" in out.stdout
    assert set(read_archive(tmp_path / "a")) == {"ok-0", "ok-1", "ok-3", "ok-4"} - unreadable
    assert set(stored_texts(backend_url)) == {None} | unreadable  # the bad rows, left where they were
    again = json.loads(cli("run", "--source", backend_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--json").stdout)
    assert again["ok"] and again["selected"] == 0 and again["source_counts"]["no_task_id"] == 1
    assert again["source_counts"].get("bad_date_done", 0) == len(unreadable)


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_date_done_before_year_1_in_the_apps_zone_is_left(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Year 1 at midnight in Tokyo is an instant of year 0 in UTC, and a date BC none at all:
    no datetime holds them. Such rows are counted as bad_date_done and stay; the rest go."""
    url = db_url(request, kind, tmp_path)
    app = celery_app(url)
    for i in range(6):
        app.backend.store_result(f"ok-{i}", i, "SUCCESS")
    age_rows(url, 40)
    engine = sa.create_engine(url[3:])
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE celery_taskmeta SET date_done = '0001-01-01 00:00:00' WHERE task_id = 'ok-1'")
        if kind == "postgresql":
            c.exec_driver_sql("UPDATE celery_taskmeta SET date_done = '0044-03-15 00:00:00 BC' WHERE task_id = 'ok-2'")
    engine.dispose()
    bad = {"ok-1", "ok-2"} if kind == "postgresql" else {"ok-1"}
    args = ("--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--timezone", "Asia/Tokyo", "--json")
    for extra in (("--dry-run",), ()):
        out = cli("run", *args, *extra)
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["selected"] == 6 - len(bad) and report["source_counts"] == {"bad_date_done": len(bad)}, report
    held = json.loads(cli("stats", *(a for a in args if a not in ("--sink", str(tmp_path / "a")))).stdout)
    assert held["results"] == len(bad) and held["source_counts"] == {"bad_date_done": len(bad)}, held
    engine = sa.create_engine(url[3:])
    with engine.connect() as c:  # (psycopg itself cannot read such a date_done)
        left = {t for (t,) in c.exec_driver_sql("SELECT task_id FROM celery_taskmeta")}
    engine.dispose()
    assert left == bad and set(read_archive(tmp_path / "a")) == {f"ok-{i}" for i in range(6)} - bad


@pytest.mark.parametrize("where", ["postgresql_new_york", "odd_sqlite"])
def test_restore_puts_back_date_done_as_stored(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if where == "odd_sqlite":
        url, _instants, _texts = odd_sqlite(tmp_path, 140)
        zone: list[str] = []
    else:
        url = "db+" + request.getfixturevalue("pg_new_york")
        reset_database(url[3:])
        now = dt.datetime.now(UTC)
        write("current", url, {}, [(f"t-{m}", now - dt.timedelta(minutes=m), False) for m in (90, 70, 10)], tmp_path)
        zone = []
    before = stored_texts(url)
    sink = str(tmp_path / "a")
    out = cli("run", "--source", url, "--sink", sink, "--older-than", "1h", "--json", *zone)
    assert out.returncode == 0, out.stderr
    gone = set(before) - set(stored_texts(url))
    assert gone
    back = cli("restore", *sorted(gone), "--sink", sink, "--into", url, "--json")
    assert back.returncode == 0, back.stderr
    assert stored_texts(url) == before  # the very text (or timestamp) each row had


def test_redis_keys_of_celery_53_layout_are_found_and_restored(tmp_path: Path) -> None:
    """Celery 5.3 and 5.4 insert ``_`` after any global_keyprefix (``app:`` gives keys
    ``app:_celery-task-meta-<id>``); such keys are archived and restored under that layout,
    and Celery 5.3 reads them back."""
    prefix = f"ca{secrets.token_hex(3)}:"
    url = REDIS_URL
    then = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    write("5.3", url, {"result_backend_transport_options": {"global_keyprefix": prefix}}, [("old-53", then, False)], tmp_path)
    write("current", url, {"result_backend_transport_options": {"global_keyprefix": prefix}}, [("old-57", then, False)], tmp_path)
    client = redis.Redis.from_url(url)
    try:
        layout = {k.decode() for k in client.scan_iter(match=f"{prefix}*")}
        assert layout == {f"{prefix}_celery-task-meta-old-53", f"{prefix}celery-task-meta-old-57"}
        out = cli("run", "--source", url, "--key-prefix", prefix, "--sink", str(tmp_path / "a"), "--older-than", "1h", "--json")
        assert json.loads(out.stdout)["deleted"] == 2 and not list(client.scan_iter(match=f"{prefix}*"))
        assert cli("restore", "old-53", "old-57", "--sink", str(tmp_path / "a"), "--into", url, "--ttl", "0").returncode == 0
        assert {k.decode() for k in client.scan_iter(match=f"{prefix}*")} == layout
        got = run_celery("5.3", f"app = celery.Celery('r', backend={url!r})\n"
                                f"app.conf.result_backend_transport_options = {{'global_keyprefix': {prefix!r}}}\n"
                                "print(app.AsyncResult('old-53').get(timeout=5))\n")
        assert got.strip() == "{'n': 1}"
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
