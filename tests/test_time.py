"""date_done is read as the instant Celery meant (issue 15), whatever the Celery version, the
database's TimeZone or the app's zone: results written by the real Celery 5.3, 5.4, 5.5 and the
current one, each at an instant set on its clock (libfaketime), into SQLite, PostgreSQL whose
database TimeZone is America/New_York, MariaDB whose sessions run at -05:00, and Redis; a run
with --older-than 1h takes exactly those older than one hour, and archives that instant."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from conftest import PG_ADMIN, _fresh_database, cli, faketime_env, reset_database, run_celery
from helpers import REDIS_URL, archive, read_archive, utc

from celery_archive import RunConfig, parse_duration, run
from celery_archive.pipeline.run import RunReport

UTC = dt.timezone.utc
VERSIONS = {"5.3": "5.3.6", "5.4": "5.4.0", "5.5": "5.5.3", "current": None}
APPS = {  # Celery settings, and the zone celery-archive is told (what -A would give)
    "default": ({}, "UTC"),
    "berlin": ({"timezone": "Europe/Berlin"}, "Europe/Berlin"),
    "new_york_local": ({"timezone": "America/New_York", "enable_utc": False}, "America/New_York"),
}
AGES = (400, 301, 299, 61, 59, 30, 2)  # minutes before now; older than 1 h: the first four
WRITE = """
import datetime as dt, json
import celery
from celery.result import AsyncResult, GroupResult
app = celery.Celery("w", backend={url!r}, set_as_current=False)
app.conf.update({conf!r})
seen = {{}}
for tid, ts, group in {items!r}:
    set_clock(dt.datetime.fromisoformat(ts))
    before = dt.datetime.now(dt.timezone.utc)
    if group:
        app.backend.save_group(tid, GroupResult(tid, [AsyncResult("t-61", app=app)], app=app))
    else:
        app.backend.store_result(tid, {{"n": 1}}, "SUCCESS")
    seen[tid] = [before.isoformat(), dt.datetime.now(dt.timezone.utc).isoformat()]
print(json.dumps(seen))
"""
Window = tuple[dt.datetime, dt.datetime]  # the instants between which Celery wrote a result


@pytest.fixture(scope="session")
def pg_new_york() -> Iterator[str]:
    """A PostgreSQL database whose TimeZone is America/New_York (as where the server runs in
    local time): Celery's connections, which set none, get it."""
    yield from _fresh_database(PG_ADMIN, " WITH (FORCE)", "ALTER DATABASE {name} SET timezone = 'America/New_York'")


@pytest.fixture
def time_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"db+sqlite:///{tmp_path / 'results.db'}"
    if kind == "postgresql_new_york":
        url: str = request.getfixturevalue("pg_new_york")
        reset_database(url)
        return "db+" + url
    # MariaDB has no per-database zone: the URL's init_command gives Celery's sessions (and
    # celery-archive's) the time_zone a non-UTC server default would give them
    url = request.getfixturevalue("mysql_url")
    reset_database(url)
    return "db+" + url + "?init_command=SET time_zone%3D'-05:00'"


def write(version: str, url: str, conf: dict[str, Any], items: list[tuple[str, dt.datetime, bool]], tmp_path: Path) -> dict[str, Window]:
    """Results written by the real Celery ``version``, its clock set to each one's instant:
    task id -> (before, after) the write, as the writing process's clock read them."""
    code = WRITE.format(url=url, conf=conf, items=[(t, at.astimezone(UTC).replace(tzinfo=None).isoformat(), g) for t, at, g in items])
    seen = json.loads(run_celery(version, code, clock=tmp_path / "clock").strip().splitlines()[-1])
    return {t: (dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b)) for t, (a, b) in seen.items()}


def within(value: dt.datetime, window: Window, slack: dt.timedelta = dt.timedelta(0)) -> bool:
    return window[0] - slack <= utc(value) <= window[1] + slack


def stored_texts(url: str, table: str = "celery_taskmeta") -> dict[str, str]:
    engine = sa.create_engine(url.removeprefix("db+"))
    cast = {"postgresql": "date_done::text", "sqlite": "date_done", "mysql": "cast(date_done as char)"}[engine.dialect.name]
    key = "task_id" if table == "celery_taskmeta" else "taskset_id"
    with engine.connect() as c:
        rows = dict(c.exec_driver_sql(f"SELECT {key}, {cast} FROM {table}").all())
    engine.dispose()
    return rows


@pytest.mark.parametrize("time_backend", ["sqlite", "postgresql_new_york", "mysql_minus_5"], indirect=True)
@pytest.mark.parametrize("app", list(APPS))
@pytest.mark.parametrize("version", list(VERSIONS))
def test_older_than_takes_exactly_what_is_older(time_backend: str, app: str, version: str, tmp_path: Path) -> None:
    conf, zone = APPS[app]
    now = dt.datetime.now(UTC).replace(microsecond=0)
    meant = {f"t-{m}": now - dt.timedelta(minutes=m) for m in AGES}
    groups = {f"g-{m}": now - dt.timedelta(minutes=m) for m in (61, 59)}
    seen = write(version, time_backend, conf, [(t, at, False) for t, at in meant.items()] + [(g, at, True) for g, at in groups.items()],
                 tmp_path)
    before = {**stored_texts(time_backend), **stored_texts(time_backend, "celery_tasksetmeta")}

    report = archive(time_backend, tmp_path / "a", "1h", timezone=zone, celery_version=VERSIONS[version])

    if version in ("5.4", "5.5"):  # their group date_done is the clock when Celery's models were imported (celery#10106)
        groups = dict.fromkeys(groups, meant["t-400"])
        seen.update(dict.fromkeys(groups, seen["t-400"]))
    old = {t for t, at in {**meant, **groups}.items() if at < now - dt.timedelta(hours=1)}
    assert report.selected == report.deleted == len(old) > 3, report
    assert set(stored_texts(time_backend)) | set(stored_texts(time_backend, "celery_tasksetmeta")) == set(before) - old
    records = read_archive(tmp_path / "a")
    assert set(records) == old
    for tid, rec in records.items():
        # MariaDB's DATETIME keeps whole seconds
        assert within(rec["date_done"], seen[tid], dt.timedelta(seconds=1 if "mysql" in time_backend else 0)), (tid, rec, seen[tid])
        assert dt.datetime.fromisoformat(rec["raw_date_done"]) == dt.datetime.fromisoformat(before[tid])  # as stored
        assert rec["raw_date_done"] == before[tid] or "sqlite" not in time_backend


@pytest.mark.parametrize("app", list(APPS))
@pytest.mark.parametrize("version", list(VERSIONS))
def test_redis_dates_of_every_version(app: str, version: str, tmp_path: Path) -> None:
    """Redis keeps the offset in the value (none in 5.3: UTC): no zone needs telling."""
    conf, _zone = APPS[app]
    prefix = f"ca{secrets.token_hex(3)}:"
    now = dt.datetime.now(UTC).replace(microsecond=0)
    meant = {f"t-{m}": now - dt.timedelta(minutes=m) for m in AGES}
    seen = write(version, REDIS_URL, {**conf, "result_backend_transport_options": {"global_keyprefix": prefix}},
                 [(t, at, False) for t, at in meant.items()], tmp_path)
    try:
        report = archive(REDIS_URL, tmp_path / "a", "1h", key_prefix=prefix)
        old = {t for t, at in meant.items() if at < now - dt.timedelta(hours=1)}
        assert report.selected == report.deleted == len(old) == 4
        records = read_archive(tmp_path / "a")
        assert set(records) == old and all(within(r["date_done"], seen[t]) for t, r in records.items())
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def _ny_dst_results(tmp_path: Path, url: str, conf: dict[str, Any], until: dt.datetime) -> dict[str, Window]:
    """Results every 10 minutes across America/New_York's fall-back (2026-11-01 06:00 UTC,
    when 01:00-02:00 local comes twice), written by the current Celery at those instants."""
    start = dt.datetime(2026, 11, 1, 3, 0, 30, tzinfo=UTC)  # 30 s off the hour: each write clearly on its side
    meant = {f"d-{i:02d}": start + dt.timedelta(minutes=10 * i) for i in range(37) if start + dt.timedelta(minutes=10 * i) <= until}
    return write("current", url, conf, [(t, at, False) for t, at in meant.items()], tmp_path)


@pytest.mark.parametrize("now", [dt.datetime(2026, 11, 1, 9, 35, tzinfo=UTC), dt.datetime(2026, 11, 1, 6, 45, tzinfo=UTC)],
                         ids=["cutoff-after-the-repeated-hour", "cutoff-inside-it"])
@pytest.mark.parametrize("where", ["postgresql_new_york", "sqlite_new_york_app", "redis_new_york_app"])
def test_dst_fall_back_inside_the_window(where: str, now: dt.datetime, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    prefix = f"ca{secrets.token_hex(3)}_"
    extra: list[str] = []
    if where == "postgresql_new_york":
        url = "db+" + request.getfixturevalue("pg_new_york")
        reset_database(url[3:])
        conf: dict[str, Any] = {}
    elif where == "sqlite_new_york_app":
        url, conf, extra = f"db+sqlite:///{tmp_path / 'r.db'}", {"timezone": "America/New_York"}, ["--timezone", "America/New_York"]
    else:
        url = REDIS_URL
        conf = {"timezone": "America/New_York", "result_backend_transport_options": {"global_keyprefix": prefix}}
        extra = ["--key-prefix", prefix]
    meant = _ny_dst_results(tmp_path, url, conf, now)
    cutoff = now - dt.timedelta(hours=1)
    # a wall time of the repeated hour is either of two instants; it is read as the later
    hour = dt.timedelta(hours=1)
    first, second = dt.datetime(2026, 11, 1, 5, tzinfo=UTC), dt.datetime(2026, 11, 1, 6, tzinfo=UTC)  # 01:00 EDT, 01:00 EST
    repeated = {t for t, (at, _) in meant.items() if url != REDIS_URL and first <= at < second}
    read = {t: (a + hour, b + hour) if t in repeated else (a, b) for t, (a, b) in meant.items()}
    try:
        out = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "1h", "--json", *extra, env=faketime_env(now))
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        taken = {t for t, (_, at) in read.items() if at < cutoff}
        assert not any(meant[t][1] >= cutoff for t in taken)  # never one taken early
        records = read_archive(tmp_path / "a")
        assert set(records) == taken and report["deleted"] == len(taken) > 0
        assert all(within(r["date_done"], read[t]) for t, r in records.items())
        walls = {t for t, (at, _) in meant.items() if url != REDIS_URL and first <= at < second + hour}  # each of two instants
        assert report["source_counts"].get("date_done_ambiguous", 0) == len(walls & taken)
        assert bool(walls & taken) == ("repeated when the clocks went back" in " ".join(report["warnings"]))
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def test_app_zone_from_dash_a_and_the_warning_without_it(tmp_path: Path) -> None:
    """-A gives the app's zone; without it (and --timezone), dates that look like local time
    are reported on stderr and in the report, and --dry-run and stats show the newest result
    taken beside now."""
    url = f"db+sqlite:///{tmp_path / 'r.db'}"
    (tmp_path / "nyapp.py").write_text(f"import celery\napp = celery.Celery('ny', backend={url!r})\n"
                                       "app.conf.update(timezone='America/New_York', enable_utc=False, result_expires=3600)\n")
    now = dt.datetime.now(UTC).replace(microsecond=0)
    meant = {f"t-{m}": now - dt.timedelta(minutes=m) for m in AGES}
    write("current", url, {"timezone": "America/New_York", "enable_utc": False}, [(t, at, False) for t, at in meant.items()], tmp_path)

    guess = cli("run", "--source", url, "--sink", str(tmp_path / "x"), "--older-than", "1h", "--dry-run", cwd=tmp_path)
    assert guess.returncode == 0, guess.stderr
    assert "looks like the app's local time" in guess.stderr and "--timezone" in guess.stderr
    assert "newest that would be taken: task t-2" in guess.stdout  # read as UTC, 5 h off: plain to see
    stats = cli("stats", "--source", url, "--older-than", "1h", "--json", cwd=tmp_path)
    assert json.loads(stats.stdout)["newest"]["task_id"] == "t-2" and json.loads(stats.stdout)["warnings"]
    assert "looks like the app's local time" in cli("rules", "check", "--source", url, "--older-than", "1h", cwd=tmp_path).stderr

    out = cli("-A", "nyapp", "run", "--sink", str(tmp_path / "a"), "--older-than", "1h", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["warnings"] == [] and report["dates"]["task"]["zone"] == "America/New_York"
    assert set(read_archive(tmp_path / "a")) == {"t-400", "t-301", "t-299", "t-61"}


def test_celery_cleanup_and_celery_archive_agree_on_postgresql(pg_new_york: str, tmp_path: Path) -> None:
    """On PostgreSQL with a New York TimeZone, Celery's own backend.cleanup() and a run take
    the same results (the field test found runs that took results seconds old)."""
    url = "db+" + pg_new_york
    reset_database(pg_new_york)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    meant = {f"t-{m}": now - dt.timedelta(minutes=m) for m in AGES}
    write("current", url, {}, [(t, at, False) for t, at in meant.items()], tmp_path)
    report = run(RunConfig(source=url, sink=str(tmp_path / "a"), older_than=parse_duration("1h"), dry_run=True))
    assert not isinstance(report, RunReport) and report.selected == 4
    run_celery("current", f"import celery\napp = celery.Celery('c', backend={url!r})\napp.conf.result_expires = 3600\n"
                          "app.backend.cleanup()\n")
    assert set(stored_texts(url)) == {"t-59", "t-30", "t-2"}


def test_workers_of_another_celery_version_are_reported(pg_new_york: str, tmp_path: Path) -> None:
    """Celery 5.3 workers store naive UTC, which celery-archive with a later Celery installed
    would read as New York time, 5 h ahead: the run says so and names --celery-version."""
    url = "db+" + pg_new_york
    reset_database(pg_new_york)
    now = dt.datetime.now(UTC)
    write("5.3", url, {}, [(f"t-{m}", now - dt.timedelta(minutes=m), False) for m in AGES], tmp_path)
    guess = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "1h", "--dry-run", "--json")
    report = json.loads(guess.stdout)
    assert "--celery-version" in " ".join(report["warnings"]) and "--celery-version" in guess.stderr
    told = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "1h", "--celery-version", "5.3", "--json")
    assert json.loads(told.stdout)["warnings"] == [] and set(read_archive(tmp_path / "a")) == {"t-400", "t-301", "t-299", "t-61"}


def test_a_zone_celery_archive_cannot_read_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    out = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "1h", "--timezone", "Europe/Atlantis")
    assert out.returncode == 2 and "unknown time zone 'Europe/Atlantis'" in out.stderr
