"""The archive+ result backend on real Redis, PostgreSQL and SQLite backends: results written
by Celery's own backend code, archived and purged by celery-archive, then read through
AsyncResult / GroupResult exactly as before the purge."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from archive_backend_support import app_for, redis_server, seen, write_results
from celery.result import AsyncResult, GroupResult
from conftest import age_rows, db_url, reset_database
from helpers import archive

from celery_archive.archive_backend import ArchivedContentRefused
from celery_archive.errors import ConfigError

IDS = ["ok-0", "ok-1", "ok-5", "fail-0", "revoked-0"]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def live_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        port = request.getfixturevalue("redis_port")
        redis.Redis(port=port).flushall()
        return f"redis://127.0.0.1:{port}/0"
    url = db_url(request, request.param, tmp_path)
    if request.param == "postgresql":
        reset_database(url[len("db+"):])
    return url


def archived(url: str, sink: Path, serializer: str = "json") -> dict[str, Any]:
    """Write results, read them as a user does, archive and purge them all; what was seen before."""
    app = app_for(url, serializer)
    write_results(app)
    if url.startswith("db+"):
        age_rows(url, 40)
        age_rows(url, 40, table="celery_tasksetmeta")
    before = seen(app, IDS)
    if url.startswith("db+"):
        report = archive(url, sink, older_than="30d", serializer=serializer)
    else:
        report = archive(url, sink, older_than="0s", serializer=serializer)
    assert report.deleted == 9  # ok-0..5, fail-0, revoked-0 and the group
    assert seen(app, ["ok-0"])["ok-0"]["state"] == "PENDING"  # purged: the plain backend has forgotten it
    return before


def test_purged_results_read_as_before(live_url: str, tmp_path: Path) -> None:
    sink = tmp_path / "archive"
    before = archived(live_url, sink)
    app = app_for("archive+" + live_url, archive_sink=str(sink))
    assert type(app.backend).__name__.startswith("Archive")
    after = seen(app, IDS)
    for tid in IDS:
        assert after[tid] == before[tid], tid
    assert after["ok-1"]["state"] == "SUCCESS" and after["ok-1"]["name"] == "shop.checkout"
    assert AsyncResult("ok-5", app=app).get(timeout=5) == {"n": 5, "items": [1, 2]}
    with pytest.raises(KeyError, match="card declined"):  # a failure re-raises its own exception type
        AsyncResult("fail-0", app=app).get(timeout=5)
    assert AsyncResult("fail-0", app=app).exists() and not AsyncResult("never-ran", app=app).exists()
    assert AsyncResult("never-ran", app=app).state == "PENDING"
    group = GroupResult.restore("grp-0", app=app)
    assert group is not None and [r.id for r in group.results] == ["ok-0", "ok-1"]
    assert group.get(timeout=5) == [{"n": 0, "items": [1, 2]}, {"n": 1, "items": [1, 2]}]  # Redis: get_many
    assert GroupResult.restore("no-such-group", app=app) is None


def test_read_only_by_default_and_restore_on_read(live_url: str, tmp_path: Path) -> None:
    sink = tmp_path / "archive"
    archived(live_url, sink)
    plain = app_for(live_url)
    reader = app_for("archive+" + live_url, archive_sink=str(sink))
    assert AsyncResult("ok-0", app=reader).state == "SUCCESS"
    assert AsyncResult("ok-0", app=plain).state == "PENDING"  # nothing was written back
    writer = app_for("archive+" + live_url, archive_sink=str(sink), archive_restore_on_read=True)
    assert AsyncResult("ok-0", app=writer).get(timeout=5) == {"n": 0, "items": [1, 2]}
    assert AsyncResult("fail-0", app=writer).state == "FAILURE"
    GroupResult.restore("grp-0", app=writer)
    put = seen(plain, ["ok-0", "fail-0"])
    assert put["ok-0"]["state"] == "SUCCESS" and put["ok-0"]["result"] == {"n": 0, "items": [1, 2]}
    assert put["ok-0"]["name"] == "shop.checkout" and put["ok-0"]["args"] == [0, "x"]
    assert put["fail-0"]["state"] == "FAILURE" and "card declined" in put["fail-0"]["result"]
    assert GroupResult.restore("grp-0", app=plain) is not None
    if live_url.startswith("redis://"):
        ttl = redis.Redis.from_url(live_url).ttl("celery-task-meta-ok-0")
        assert 0 < ttl <= 86400  # the backend's own expiry (result_expires, 1 day)


def test_live_results_and_writes_pass_through(live_url: str, tmp_path: Path) -> None:
    sink = tmp_path / "archive"
    archived(live_url, sink)
    app = app_for("archive+" + live_url, archive_sink=str(sink), archive_miss_ttl=60)
    assert AsyncResult("later-0", app=app).state == "PENDING"  # not archived: a miss, remembered for 60 s
    app.backend.store_result("later-0", 42, "SUCCESS")  # a write goes to the live backend
    assert AsyncResult("later-0", app=app).get(timeout=5) == 42  # seen at once despite the cached miss
    app.backend.store_result("ok-0", "re-run", "SUCCESS")  # an archived id run again: the live result wins
    assert AsyncResult("ok-0", app=app).get(timeout=5) == "re-run"
    assert seen(app_for(live_url), ["ok-0"])["ok-0"]["result"] == "re-run"
    AsyncResult("later-0", app=app).forget()
    assert AsyncResult("later-0", app=app).state == "PENDING"
    app.backend.mark_as_revoked("revoke-me", "terminated")
    assert AsyncResult("revoke-me", app=app_for(live_url)).state == "REVOKED"


def test_pickle_archive_is_refused_by_an_app_that_does_not_accept_pickle(redis_port: int, tmp_path: Path) -> None:
    redis.Redis(port=redis_port).flushall()
    url, sink = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "archive"
    archived(url, sink, serializer="pickle")
    json_only = app_for("archive+" + url, accept=["json"], archive_sink=str(sink))
    with pytest.raises(ArchivedContentRefused, match=r"archived as pickle .*result_accept_content \(json\) does not accept"):
        AsyncResult("ok-0", app=json_only).get(timeout=5)
    trusting = app_for("archive+" + url, serializer="pickle", archive_sink=str(sink))
    assert AsyncResult("ok-0", app=trusting).get(timeout=5) == {"n": 0, "items": [1, 2]}


def test_sqlite_celery_56_pickle_column_needs_pickle_accepted(tmp_path: Path) -> None:
    from conftest import run_celery56

    url, sink = f"db+sqlite:///{tmp_path / 'r56.db'}", tmp_path / "archive"
    run_celery56(url, "app.backend.store_result('old-0', {'v': 1}, 'SUCCESS')")
    age_rows(url, 40)
    assert archive(url, sink, older_than="30d", celery_version="5.6").deleted == 1
    with pytest.raises(ArchivedContentRefused, match="pickle"):
        AsyncResult("old-0", app=app_for("archive+" + url, archive_sink=str(sink))).state  # noqa: B018
    app = app_for("archive+" + url, accept=["json", "pickle"], archive_sink=str(sink))
    assert AsyncResult("old-0", app=app).get(timeout=5) == {"v": 1}


def test_unreachable_or_damaged_archive_leaves_the_live_path_alone(redis_port: int, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    redis.Redis(port=redis_port).flushall()
    url, sink = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "archive"
    archived(url, sink)
    for f in (sink / "data").rglob("*.parquet"):
        f.write_bytes(b"not parquet at all")  # every data file damaged
    app = app_for("archive+" + url, archive_sink=str(sink), archive_miss_ttl=0)
    app.backend.store_result("live-0", 1, "SUCCESS")
    with caplog.at_level(logging.WARNING, logger="celery_archive.archive_backend"):
        assert AsyncResult("ok-0", app=app).state == "PENDING"
        assert AsyncResult("ok-0", app=app).state == "PENDING"
        assert AsyncResult("live-0", app=app).get(timeout=5) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "celery_archive.archive_backend"]
    assert len(warnings) == 1 and "celery-archive verify --sink" in warnings[0], warnings
    caplog.clear()
    for f in (sink / "index").rglob("*.parquet"):
        f.write_bytes(b"damaged")
    gone = app_for("archive+" + url, archive_sink=str(sink), archive_miss_ttl=0, archive_retry_after=0)
    with caplog.at_level(logging.WARNING, logger="celery_archive.archive_backend"):
        for _ in range(3):
            assert AsyncResult("ok-1", app=gone).state == "PENDING"
        assert AsyncResult("live-0", app=gone).get(timeout=5) == 1
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert "the live backend's answer stands" in caplog.records[0].getMessage()
    assert "celery-archive index rebuild" in caplog.records[0].getMessage()


def test_s3_archive_and_no_secret_in_warnings(redis_port: int, tmp_path: Path, s3_bucket: str,
                                              caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    redis.Redis(port=redis_port).flushall()
    url = f"redis://127.0.0.1:{redis_port}/0"
    archived(url, f"s3://{s3_bucket}/prod")  # type: ignore[arg-type]
    app = app_for("archive+" + url, archive_sink=f"s3://{s3_bucket}/prod")
    assert AsyncResult("ok-2", app=app).get(timeout=5) == {"n": 2, "items": [1, 2]}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-me")
    down = app_for("archive+" + url, archive_sink=f"s3://{s3_bucket}/prod")
    with caplog.at_level(logging.WARNING, logger="celery_archive.archive_backend"):
        assert AsyncResult("ok-3", app=down).state == "PENDING"
        assert AsyncResult("ok-4", app=down).state == "PENDING"
    ours = [r for r in caplog.records if r.name == "celery_archive.archive_backend"]
    text = " ".join(r.getMessage() for r in ours)
    assert len(ours) == 1 and "AWS_ENDPOINT_URL" in text and "answer stands" in text and "do-not-print-me" not in text


def test_configuration_errors_are_clear(redis_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_ARCHIVE_SINK", raising=False)
    url = f"redis://127.0.0.1:{redis_port}/0"
    with pytest.raises(ConfigError, match="archive_sink"):
        app_for("archive+" + url).backend  # noqa: B018
    with pytest.raises(ConfigError, match="unsupported sink scheme 'ftp'"):
        app_for("archive+" + url, archive_sink="ftp://x/y").backend  # noqa: B018
    with pytest.raises(ConfigError, match="archive_miss_ttl must be a number"):
        app_for("archive+" + url, archive_sink="/tmp", archive_miss_ttl="soon").backend  # noqa: B018
    monkeypatch.setenv("CELERY_ARCHIVE_SINK", "/tmp")
    assert app_for("archive+" + url).backend.archive.sink.url


def test_a_run_that_commits_later_is_seen_and_compaction_is_followed(redis_port: int, tmp_path: Path) -> None:
    from celery_archive import open_sink
    from celery_archive.index.packs import compact, state

    redis.Redis(port=redis_port).flushall()
    url, sink = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "archive"
    archived(url, sink)
    app = app_for("archive+" + url, archive_sink=str(sink), archive_miss_ttl=0, archive_relist_after=0)
    assert AsyncResult("ok-0", app=app).state == "SUCCESS"  # the listing is now cached
    plain = app_for(url)
    plain.backend.store_result("late-0", "late", "SUCCESS")
    assert AsyncResult("late-0", app=app).get(timeout=5) == "late"  # live
    assert archive(url, sink, older_than="0s").deleted == 1  # a second run archives and purges it
    assert AsyncResult("late-0", app=app).get(timeout=5) == "late"  # not in the cached listing: listed again
    compact(open_sink(str(sink)), tmp_path)
    assert state(open_sink(str(sink))).generation == 1 and not state(open_sink(str(sink))).deltas
    fresh = app_for("archive+" + url, archive_sink=str(sink))
    assert AsyncResult("late-0", app=fresh).get(timeout=5) == "late" and AsyncResult("ok-3", app=fresh).state == "SUCCESS"
    app.backend.archive.index.refresh = 0  # the old listing named run files the compaction deleted: listed again
    assert AsyncResult("ok-4", app=app).state == "SUCCESS"
    assert AsyncResult("never-0", app=app).state == "PENDING"


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reading archived results through Celery", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    out = subprocess.run([sys.executable, "-c", code.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "archive" / "index").is_dir()


@pytest.mark.parametrize(("inner", "wrapped"), [
    ("redis://127.0.0.1:{port}/0", "RedisBackend"),
    ("rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required", "RedisBackend"),
    ("redis+socket://{sock}", "RedisBackend"),
    ("sentinel://127.0.0.1:{port}/0;sentinel://127.0.0.1:{port}/0", "SentinelBackend"),
    ("db+sqlite:///{tmp}/r.db", "DatabaseBackend"),
])
def test_every_url_kind_is_wrapped(inner: str, wrapped: str, redis_port: int, tmp_path: Path,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    from celery.backends.redis import RedisBackend

    sock = next(p for p in tmp_path_factory.getbasetemp().rglob("redis.sock"))
    url = inner.format(port=redis_port, sock=sock, tmp=tmp_path)
    app = app_for("archive+" + url, archive_sink=str(tmp_path / "archive"))
    backend = app.backend
    assert type(backend).__name__ == f"Archive{wrapped}" and type(backend).__mro__[2].__name__ == wrapped
    if wrapped == "RedisBackend":
        assert isinstance(backend, RedisBackend)
    if url.startswith("redis+socket"):  # a real read and write over the Unix socket
        redis.Redis(unix_socket_path=str(sock)).flushall()
        archived("redis+socket://" + str(sock), tmp_path / "archive")
        assert AsyncResult("ok-2", app=app).get(timeout=5) == {"n": 2, "items": [1, 2]}
    with pytest.raises(ConfigError, match="wraps the archive backend in itself"):
        app_for("archive+archive+" + url, archive_sink=str(tmp_path)).backend  # noqa: B018


def test_an_s3_endpoint_that_hangs_costs_seconds_not_minutes(redis_port: int, tmp_path: Path, s3_bucket: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    redis.Redis(port=redis_port).flushall()
    url = f"redis://127.0.0.1:{redis_port}/0"
    archived(url, tmp_path / "unused")
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        app = app_for("archive+" + url, archive_sink=f"s3://{s3_bucket}/prod", archive_timeout=0.5)
        t0 = time.perf_counter()
        assert AsyncResult("ok-0", app=app).state == "PENDING"
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert AsyncResult("ok-1", app=app).state == "PENDING"  # left alone for archive_retry_after: no wait
        again = time.perf_counter() - t0
    assert took < 5 and again < 0.5, (took, again)


@pytest.mark.parametrize(("serializer", "conf"), [("msgpack", {}), ("yaml", {}), ("json", {"result_compression": "gzip"})])
def test_other_serializers_and_compressed_results(serializer: str, conf: dict[str, Any], redis_port: int, tmp_path: Path) -> None:
    redis.Redis(port=redis_port).flushall()
    url, sink = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "archive"
    app = app_for(url, serializer, **conf)
    write_results(app)
    before = seen(app, IDS)
    assert archive(url, sink, older_than="0s", serializer=serializer).deleted == 9
    after = seen(app_for("archive+" + url, serializer, archive_sink=str(sink), **conf), IDS)
    assert after == before


def test_unknown_ids_cost_at_most_one_read_and_polls_none(redis_port: int, tmp_path: Path) -> None:
    from celery_archive import open_sink
    from celery_archive.archive_backend.settings import ArchiveSettings
    from celery_archive.archive_backend.tier import ArchiveTier
    from celery_archive.index.packs import compact
    from celery_archive.restore.search import CountingSink

    redis.Redis(port=redis_port).flushall()
    url, sink = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "archive"
    archived(url, sink)
    compact(open_sink(str(sink)), tmp_path)
    app = app_for("archive+" + url, archive_sink=str(sink))
    counting = CountingSink(open_sink(str(sink)))
    app.backend.archive = ArchiveTier(ArchiveSettings(sink=str(sink)), sink=counting)
    for i in range(20):
        before = counting.reads
        assert AsyncResult(f"unknown-{i}", app=app).state == "PENDING"
        assert counting.reads - before <= 1  # at most the pack of its bucket
    before, lists = counting.reads, counting.lists
    for _ in range(50):  # a client polling a task that has not run yet
        assert AsyncResult("unknown-0", app=app).state == "PENDING"
    assert (counting.reads, counting.lists) == (before, lists)
    assert AsyncResult("ok-3", app=app).state == "SUCCESS"


def test_a_record_that_will_not_decode_leaves_the_live_answer(redis_port: int, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from celery_archive import open_sink
    from celery_archive.index.packs import compact, located

    redis.Redis(port=redis_port).flushall()
    url, sink = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "archive"
    archived(url, sink)
    for f in (sink / "data").rglob("*.parquet"):  # ok-0's stored bytes garbled, then the index made again
        t = pq.read_table(f)
        if "ok-0" in t.column("task_id").to_pylist():
            raw = pc.if_else(pc.equal(t.column("task_id"), "ok-0"), pa.scalar(b"\xff not json", pa.binary()), t.column("raw_value"))
            pq.write_table(t.set_column(t.schema.get_field_index("raw_value"), "raw_value", raw), f)
    compact(open_sink(str(sink)), tmp_path, rebuilt=located(open_sink(str(sink)), tmp_path))
    app = app_for("archive+" + url, archive_sink=str(sink), archive_miss_ttl=0)
    with caplog.at_level(logging.WARNING, logger="celery_archive.archive_backend"):
        assert AsyncResult("ok-0", app=app).state == "PENDING"
        assert AsyncResult("ok-0", app=app).state == "PENDING"
        assert AsyncResult("ok-1", app=app).state == "SUCCESS"
    ours = [r.getMessage() for r in caplog.records if r.name == "celery_archive.archive_backend"]
    assert len(ours) == 1 and "ok-0 is in the archive but its stored bytes do not decode" in ours[0], ours


def test_a_forgotten_result_stops_being_answered_once_the_index_is_listed_again(tmp_path: Path) -> None:
    """An app that read a result through archive+ before it was forgotten answers it from its
    cache only until it lists the index again (archive_index_refresh), as the README says."""
    import subprocess
    import sys
    import time

    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    sink = tmp_path / "archive"
    archived(url, sink)
    reader = app_for("archive+" + url, archive_sink=str(sink), archive_index_refresh=1)
    assert AsyncResult("ok-1", app=reader).get(timeout=5) == {"n": 1, "items": [1, 2]}
    exe = str(Path(sys.executable).parent / "celery-archive")
    forget = subprocess.run([exe, "forget", "ok-1", "--sink", str(sink), "--reason", "erasure request"],
                            capture_output=True, text=True, timeout=120)
    assert forget.returncode == 0, forget.stderr
    time.sleep(1.5)
    assert AsyncResult("ok-1", app=reader).state == "PENDING"
    assert AsyncResult("ok-1", app=reader).result is None
    assert AsyncResult("ok-0", app=reader).get(timeout=5) == {"n": 0, "items": [1, 2]}  # its neighbour still answers
