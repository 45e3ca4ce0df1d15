"""Restore: archive with Celery's own backends, purge, then find results by id through the
restore index and put them back, until ``AsyncResult(id)`` answers as it did before."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import age_rows, celery_app, cli, table_rows
from helpers import REDIS_URL, archive, keys, later, redis_app, wait_for, write_redis_results, write_sql_results

from celery_archive.backends import TargetConfig, open_target
from celery_archive.index.packs import COMPACT_AFTER, state
from celery_archive.restore.search import find
from celery_archive.sinks import open_sink

IDS = ["ok-0", "ok-3", "fail-1", "revoked-0"]


def snapshot(app: Any, task_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """What a user sees through AsyncResult: state, result (or the exception), name, args,
    kwargs, worker, date_done, traceback."""
    out = {}
    for tid in task_ids:
        r = app.AsyncResult(tid)
        result = r.result
        shown = (type(result).__name__, result.args) if isinstance(result, BaseException) else result
        out[tid] = (r.state, shown, r.name, r.args, r.kwargs, r.worker, r.date_done, r.traceback)
    return out


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_sql_archive_purge_restore(backend_url: str, tmp_path: Path, serializer: str) -> None:
    app = celery_app(backend_url, serializer=serializer)
    write_sql_results(app)
    ids = [*IDS, "fail-0"]
    age_rows(backend_url, 40)
    age_rows(backend_url, 40, table="celery_tasksetmeta")
    before = snapshot(app, ids)
    sink = tmp_path / "archive"
    report = archive(backend_url, sink, serializer=serializer)
    assert report.deleted == report.archived > len(ids)
    assert app.AsyncResult("ok-3").state == "PENDING"  # gone from the backend

    proc = cli("restore", *ids, "group-0", "--sink", str(sink), "--into", backend_url, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["restored"], out["skipped"], out["missing"]) == (len(ids) + 1, 0, [])

    app2 = celery_app(backend_url, serializer=serializer)  # a fresh client, as a user's process would be
    assert snapshot(app2, ids) == before
    assert app2.AsyncResult("ok-3").get(timeout=5)["n"] == 3
    with pytest.raises(ValueError, match="card declined"):
        app2.AsyncResult("fail-1").get(timeout=5)
    group = app2.GroupResult.restore("group-0")
    assert [r.id for r in group.results] == ["ok-0", "ok-1"]
    assert set(table_rows(backend_url)) == {*ids, "started-0"}  # nothing else came back (started-0 never left)


def test_sql_restore_into_celery56_table(tmp_path: Path) -> None:
    """Results archived from a Celery 5.7 table go back into a Celery <= 5.6 table in its own
    format (a pickle in `result`), and Celery 5.6.3 reads them."""
    from conftest import run_celery56

    src = f"db+sqlite:///{tmp_path / 'new.db'}"
    app = celery_app(src)
    write_sql_results(app)
    age_rows(src, 40)
    archive(src, tmp_path / "archive")
    old = f"db+sqlite:///{tmp_path / 'old.db'}"
    run_celery56(old, "app.backend.store_result('seed', 1, 'SUCCESS')")  # Celery 5.6.3 makes its tables
    target = open_target(TargetConfig(old))
    found = find(open_sink(str(tmp_path / "archive")), ["ok-3", "fail-1"])
    assert target.put(found.records, "skip").restored == 2
    target.close()
    out = run_celery56(old, "r = app.AsyncResult('ok-3'); f = app.AsyncResult('fail-1')\n"
                            "print(repr((r.state, r.result['n'], r.name, r.args, f.state, type(f.result).__name__)))")
    assert out.strip() == "('SUCCESS', 3, 'shop.checkout', [1, 'two', [3]], 'FAILURE', 'ValueError')"


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_redis_archive_purge_restore(prefix: str, tmp_path: Path, serializer: str) -> None:
    app = redis_app(prefix, serializer=serializer)
    write_redis_results(app)
    ids = ["ok-0", "ok-5", "fail-0", "revoked-0"]
    before_keys = keys(prefix)
    before = snapshot(app, ids)
    sink = tmp_path / "archive"
    archive(REDIS_URL, sink, older_than="1s", now=later(), serializer=serializer, key_prefix=prefix)
    assert app.AsyncResult("ok-5").state == "PENDING"

    proc = cli("restore", *ids, "--sink", str(sink), "--into", REDIS_URL, "--ttl", "2h", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["restored"] == 4
    client = redis.Redis.from_url(REDIS_URL)
    for tid in ids:
        key = f"{prefix}celery-task-meta-{tid}"
        assert client.get(key) == before_keys[key]  # the original key and bytes
        assert 7_100 < client.ttl(key) <= 7_200
    app2 = redis_app(prefix, serializer=serializer)
    assert snapshot(app2, ids) == before
    with pytest.raises(ValueError, match="card declined"):
        app2.AsyncResult("fail-0").get(timeout=5)


def test_redis_restore_wakes_a_waiting_get(prefix: str, tmp_path: Path) -> None:
    app = redis_app(prefix)
    app.backend.store_result("late-0", {"answer": 42}, "SUCCESS")
    archive(REDIS_URL, tmp_path / "archive", older_than="1s", now=later(), key_prefix=prefix)
    got: list[Any] = []
    waiter = redis_app(prefix)
    result = waiter.AsyncResult("late-0")
    result.backend.result_consumer.start("late-0")
    thread = threading.Thread(target=lambda: got.append(result.get(timeout=10)))
    thread.start()
    channel = f"{prefix}celery-task-meta-late-0"  # Celery's get() waits on a channel named as the key
    client = redis.Redis.from_url(REDIS_URL)
    wait_for(lambda: client.pubsub_numsub(channel)[0][1] > 0, what="the waiter's subscription")
    client.close()
    target = open_target(TargetConfig(REDIS_URL))
    target.put(find(open_sink(str(tmp_path / "archive")), ["late-0"]).records, "skip")
    target.close()
    thread.join(timeout=8)
    assert got == [{"answer": 42}]


def test_conflict_policies(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    write_sql_results(app)
    age_rows(sqlite_url, 40)
    sink = str(tmp_path / "archive")
    archive(sqlite_url, Path(sink))
    app.backend.store_result("ok-3", "rerun", "SUCCESS")  # the id is in use again
    proc = cli("restore", "ok-3", "ok-4", "--sink", sink, "--into", sqlite_url, "--on-conflict", "fail", "--json")
    assert proc.returncode == 6 and "already in" in json.loads(proc.stdout)["error"]
    assert set(table_rows(sqlite_url)) == {"ok-3", "started-0"}  # nothing was restored
    proc = cli("restore", "ok-3", "ok-4", "--sink", sink, "--into", sqlite_url, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["skipped"] == 1
    assert app.AsyncResult("ok-3").result == "rerun"
    proc = cli("restore", "ok-3", "--sink", sink, "--into", sqlite_url, "--on-conflict", "overwrite", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["overwritten"] == 1
    assert app.AsyncResult("ok-3").result["n"] == 3


@pytest.mark.parametrize("fmt,compression,data_reads", [("parquet", None, 2), ("jsonl", None, 1), ("jsonl", "zstd", 1), ("jsonl", "gzip", 1)])
def test_index_lookup_costs_few_reads(sqlite_url: str, tmp_path: Path, fmt: str, compression: str | None, data_reads: int) -> None:
    app = celery_app(sqlite_url)
    sink = tmp_path / "archive"
    everything: dict[str, int] = {}
    for run_no in range(COMPACT_AFTER + 2):  # enough runs for the automatic compaction
        for i in range(30):
            app.backend.store_result(f"r{run_no}-{i}", {"run": run_no, "i": i}, "SUCCESS")
            everything[f"r{run_no}-{i}"] = run_no
        age_rows(sqlite_url, 40)
        archive(sqlite_url, sink, format=fmt, compression=compression, max_file_bytes=2000)
    st = state(open_sink(str(sink)))
    assert st.generation >= 1 and len(st.deltas) < COMPACT_AFTER  # compacted along the way
    assert cli("index", "compact", "--sink", str(sink)).returncode == 0
    for tid in ["r0-0", "r4-17", f"r{COMPACT_AFTER + 1}-29"]:
        found = find(open_sink(str(sink)), [tid])
        assert [json.loads(r["result"]) for r in found.records] == [{"run": everything[tid], "i": int(tid.split("-")[1])}]
        assert (found.reads, found.lists) == (1 + data_reads, 1)  # one pack, then the data
    # every id is found, from many small files
    found = find(open_sink(str(sink)), list(everything))
    assert {r["task_id"] for r in found.records} == set(everything) and not found.missing


def test_index_is_rebuilt_from_the_data_files(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    write_sql_results(app)
    age_rows(sqlite_url, 40)
    sink = tmp_path / "archive"
    archive(sqlite_url, sink)
    expected = find(open_sink(str(sink)), IDS).records
    shutil.rmtree(sink / "index")  # the index is a cache: lose it
    proc = cli("restore", "ok-3", "--sink", str(sink))
    assert proc.returncode == 5 and "index rebuild" in proc.stderr
    proc = cli("index", "rebuild", "--sink", str(sink), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["entries"] == 29
    assert find(open_sink(str(sink)), IDS).records == expected


def test_print_and_bulk_selection(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    write_sql_results(app)
    age_rows(sqlite_url, 40)
    sink = str(tmp_path / "archive")
    report = archive(sqlite_url, Path(sink))
    proc = cli("restore", "fail-1", "--sink", sink)
    assert proc.returncode == 0 and "FAILURE" in proc.stdout and "card declined" in proc.stdout and "shop.charge" in proc.stdout
    proc = cli("restore", "ok-1", "nope", "--sink", sink, "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 5
    assert lines[0]["found"] and lines[0]["result"]["n"] == 1 and lines[0]["args"] == [1, "two", [3]]
    assert lines[1] == {"command": "restore", "found": False, "task_id": "nope", "error": "not in the archive"}
    proc = cli("restore", "--run", report.run_id, "--name", "shop.ch*", "--since", "60d", "--sink", sink, "--json")
    names = [json.loads(line)["name"] for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and sorted(set(names)) == ["shop.charge", "shop.checkout"] and len(names) == 28
    assert cli("restore", "--until", "60d", "--sink", sink, "--json").stdout == ""  # nothing that old
    assert cli("restore", "--sink", sink).returncode == 2


def test_a_result_archived_twice_comes_back_in_bulk_as_its_newest_copy(sqlite_url: str, tmp_path: Path) -> None:
    """Field test: results that failed, were restored, ran again and were archived again are in
    the archive twice; a bulk restore put the old failures back (5 of 5) and printed each twice.
    It gives the newest copy once, as a lookup by id does."""
    app = celery_app(sqlite_url)
    for i in range(5):
        app.backend.mark_as_failure(f"x-{i}", KeyError("v1"))
    app.backend.store_result("other", "kept once", "SUCCESS")
    age_rows(sqlite_url, 40)
    sink = str(tmp_path / "archive")
    archive(sqlite_url, Path(sink))
    for i in range(5):  # the same ids, run again
        app.backend.store_result(f"x-{i}", {"v": 2}, "SUCCESS")
    age_rows(sqlite_url, 40)
    archive(sqlite_url, Path(sink))
    shown = [json.loads(line) for line in cli("restore", "--since", "60d", "--sink", sink, "--json").stdout.splitlines()]
    assert sorted(r["task_id"] for r in shown) == ["other", "x-0", "x-1", "x-2", "x-3", "x-4"]
    assert all(r["status"] == "SUCCESS" for r in shown)
    into = f"db+sqlite:///{tmp_path / 'empty.db'}"
    celery_app(into).backend.store_result("seed", 1, "SUCCESS")  # Celery's tables, none of these ids
    out = cli("restore", "--since", "60d", "--sink", sink, "--into", into, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["restored"] == 6
    assert celery_app(into).AsyncResult("x-3").get(timeout=5) == {"v": 2}


def test_redis_conflict_policies(prefix: str, tmp_path: Path) -> None:
    app = redis_app(prefix)
    app.backend.store_result("c-0", "archived value", "SUCCESS")
    app.backend.store_result("c-1", "archived too", "SUCCESS")
    sink = str(tmp_path / "archive")
    archive(REDIS_URL, Path(sink), older_than="1s", now=later(), key_prefix=prefix)
    app.backend.store_result("c-0", "a newer run", "SUCCESS")  # the id is in use again
    proc = cli("restore", "c-0", "c-1", "--sink", sink, "--into", REDIS_URL, "--on-conflict", "fail", "--json")
    assert proc.returncode == 6 and app.AsyncResult("c-1").state == "PENDING"  # nothing was restored
    proc = cli("restore", "c-0", "c-1", "--sink", sink, "--into", REDIS_URL, "--json")
    assert json.loads(proc.stdout)["skipped"] == 1 and app.AsyncResult("c-0").result == "a newer run"
    assert redis_app(prefix).AsyncResult("c-1").result == "archived too"
    proc = cli("restore", "c-0", "--sink", sink, "--into", REDIS_URL, "--on-conflict", "overwrite", "--ttl", "0", "--json")
    assert json.loads(proc.stdout)["overwritten"] == 1
    assert redis_app(prefix).AsyncResult("c-0").result == "archived value"
    assert redis.Redis.from_url(REDIS_URL).ttl(f"{prefix}celery-task-meta-c-0") == -1  # --ttl 0: kept


def test_index_packs_written_with_another_schema_still_answer(sqlite_url: str, tmp_path: Path) -> None:
    """Field test: a pack rewritten by another tool (pyarrow marks its columns nullable) beside
    a run's index file made every lookup fail with a traceback; the two are read together."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    app = celery_app(sqlite_url)
    for i in range(50):
        app.backend.store_result(f"k-{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40)
    sink = tmp_path / "archive"
    archive(sqlite_url, sink)
    assert cli("index", "compact", "--sink", str(sink)).returncode == 0
    for p in (sink / "index").rglob("*.parquet"):
        t = pq.read_table(p)
        pq.write_table(t.cast(pa.schema([f.with_nullable(True) for f in t.schema])), p)
    for i in range(50, 60):
        app.backend.store_result(f"k-{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40, where="task_id >= 'k-50'")
    archive(sqlite_url, sink)  # its index file beside the rewritten packs
    for tid, value in (("k-7", 7), ("k-55", 55)):
        out = cli("restore", tid, "--sink", str(sink), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["result"] == value
