"""Records no Celery writes, beside results Celery's own RedisBackend wrote (issue 14, items 4
and 5): each hostile one is written with redis-py directly, counted, named, left where it is,
and never stops the others from being archived; key names travel as bytes end to end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import redis
from conftest import cli
from helpers import REDIS_URL, keys, read_archive, redis_app, utc, write_redis_results

GOOD = {"fail-0", "revoked-0", "group-0"} | {f"ok-{i}" for i in range(12)}


def _meta_of(client: redis.Redis, key_prefix: str, task_id: str) -> dict[str, object]:
    raw = client.get(f"{key_prefix}celery-task-meta-{task_id}")
    assert raw is not None
    meta: dict[str, object] = json.loads(raw)
    return meta


def test_wrong_types_bad_dates_and_binary_keys_beside_good_results(prefix: str, tmp_path: Path) -> None:
    app = redis_app(prefix)
    write_redis_results(app)
    client = redis.Redis.from_url(REDIS_URL)
    task = f"{prefix}celery-task-meta-".encode()
    # keys of the wrong type under the task prefix: Redis answers GET with WRONGTYPE
    client.hset(task + b"a-hash", mapping={"status": "SUCCESS"})
    client.rpush(task + b"a-list", b"x")
    client.sadd(task + b"a-set", b"x")
    client.zadd(task + b"a-zset", {b"x": 1})
    client.xadd(task + b"a-stream", {"f": "v"})
    # Celery's own value with a date_done no Celery writes: a number, and text that is no date
    ok0 = _meta_of(client, prefix, "ok-0")
    client.setex(task + b"numeric-date", 86400, json.dumps({**ok0, "task_id": "numeric-date", "date_done": 1_700_000_000}))
    client.setex(task + b"text-date", 86400, json.dumps({**ok0, "task_id": "text-date", "date_done": "yesterday"}))
    client.setex(task + b"bad-name", 86400, json.dumps({**ok0, "task_id": "bad-name", "name": 12}))
    client.setex(task + b"bad-id", 86400, json.dumps({**ok0, "task_id": {"id": 1}}))
    # a key that is not UTF-8 holding what Celery wrote for another result (its task_id is not the
    # key's: left alone, malformed), and one holding a meta without a task_id: archived under the
    # key's text, and put back under exactly its bytes
    impostor_key = task + b"bin-\xff\xfe-0"
    celery_value = client.get(task + b"ok-5")
    assert celery_value is not None
    client.setex(impostor_key, 86400, celery_value.replace(b"ok-5", b"bin-0"))
    binary_key = task + b"bin-\xff\xfe-1"
    binary_value = json.dumps({k: v for k, v in json.loads(celery_value).items() if k != "task_id"}).encode()
    client.setex(binary_key, 86400, binary_value)
    binary_id = binary_key[len(task):].decode("utf-8", "replace")
    hostile = {k for k in client.scan_iter(match=f"{prefix}*") if k != binary_key and b"-meta-ok-" not in k
               and not k.endswith((b"fail-0", b"revoked-0", b"group-0", b"started-0"))}
    sink = tmp_path / "archive"

    # a CLI run takes no clock: --older-than 0s takes whatever was written before it started
    out = cli("run", "--source", REDIS_URL, "--key-prefix", prefix, "--sink", str(sink), "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    counts, examples = report["source_counts"], report["source_examples"]
    assert (counts["wrong_type"], counts["bad_date"], counts["malformed"]) == (5, 2, 3)
    assert sorted(examples["wrong_type"]) == sorted(f"{prefix}celery-task-meta-a-{t} (a {t})" for t in ("hash", "list", "set", "zset", "stream"))
    assert sorted(examples["bad_date"]) == [f"{prefix}celery-task-meta-numeric-date (date_done 1700000000)",
                                            f"{prefix}celery-task-meta-text-date (date_done 'yesterday')"]
    assert sorted(examples["malformed"]) == [f"{prefix}celery-task-meta-bad-id (task_id is dict {{'id': 1}})",
                                             f"{prefix}celery-task-meta-bad-name (name is int 12)",
                                             f"{prefix}celery-task-meta-bin-\\xff\\xfe-0 (task_id 'bin-0' is not the key's)"]
    records = read_archive(sink)
    assert set(records) == GOOD | {binary_id}  # everything Celery wrote, and the binary key once
    assert report["deleted"] == report["verified"] == len(records) and report["skipped_changed"] == 0
    rec = records[binary_id]
    assert rec["raw_key"] == binary_key and rec["raw_value"] == binary_value
    assert rec["source_table"] == binary_key.decode("utf-8", "replace")  # the text form, for people
    left = set(client.scan_iter(match=f"{prefix}*"))
    assert hostile <= left and binary_key not in left  # left alone, except what was archived and purged
    assert client.type(task + b"a-hash") == b"hash" and client.hgetall(task + b"a-hash") == {b"status": b"SUCCESS"}

    again = cli("run", "--source", REDIS_URL, "--key-prefix", prefix, "--sink", str(sink), "--older-than", "1s")
    assert again.returncode == 0, again.stderr
    assert "archived 0 of 0 results" in again.stdout  # nothing is archived a second time
    assert "left alone 5 record(s) that hold a hash, list, set, sorted set or stream" in again.stdout
    assert f"{prefix}celery-task-meta-a-hash (a hash)" in again.stdout and "[bad_date]" in again.stdout

    # restore puts the binary key back under exactly its own bytes
    put = cli("restore", binary_id, "--sink", str(sink), "--into", REDIS_URL, "--json")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["restored"] == 1
    assert client.get(binary_key) == rec["raw_value"]
    assert not [k for k in client.scan_iter(match=f"{prefix}*bin-*") if k not in (binary_key, impostor_key)]
    client.close()


def test_a_finished_result_without_date_done_is_dated_from_its_ttl(prefix: str, tmp_path: Path) -> None:
    """Item 5: no date_done, a TTL: its age is result_expires less the TTL left, as for groups,
    so --expiring-within and --older-than both take it before Redis expires it."""
    app = redis_app(prefix, result_expires=86400)
    app.backend.store_result("written-0", {"n": 1}, "SUCCESS")
    client = redis.Redis.from_url(REDIS_URL)
    ok = _meta_of(client, prefix, "written-0")
    task = f"{prefix}celery-task-meta-"
    undated = {k: v for k, v in ok.items() if k != "date_done"}
    client.setex(f"{task}soon-0", 60, json.dumps({**undated, "task_id": "soon-0"}))  # about to expire
    client.setex(f"{task}null-0", 60, json.dumps({**ok, "task_id": "null-0", "date_done": None}))
    client.setex(f"{task}old-0", 600, json.dumps({**undated, "task_id": "old-0"}))
    client.set(f"{task}never-0", json.dumps({**undated, "task_id": "never-0"}))  # no TTL, no date: its age is unknown
    base = ["run", "--source", REDIS_URL, "--key-prefix", prefix, "--older-than", "12h", "--json"]

    # result_expires 1m: the two with a minute left were just written, yet expire within 2m
    margin = json.loads(cli(*base, "--result-expires", "1m", "--sink", str(tmp_path / "a1"), "--expiring-within", "2m").stdout)
    assert set(read_archive(tmp_path / "a1")) == {"soon-0", "null-0"} and margin["deleted"] == 2
    assert margin["source_counts"]["undated"] == 1 and margin["source_examples"]["undated"] == [f"{task}never-0"]
    assert set(keys(prefix)) == {f"{task}written-0", f"{task}old-0", f"{task}never-0"}

    # result_expires 1d: 10 minutes left of a day means it was written 23h50m ago: past 12h
    by_age = json.loads(cli(*base, "--result-expires", "1d", "--sink", str(tmp_path / "a2")).stdout)
    assert set(read_archive(tmp_path / "a2")) == {"old-0"} and by_age["deleted"] == 1
    expected = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1) + dt.timedelta(seconds=600)
    assert abs(utc(read_archive(tmp_path / "a2")["old-0"]["date_done"]) - expected) < dt.timedelta(seconds=30)
    assert set(keys(prefix)) == {f"{task}written-0", f"{task}never-0"}
    client.close()


def test_records_of_schema_v1_have_no_key_bytes_and_go_by_their_text(prefix: str) -> None:
    """A v1 record has raw_key null: the purge and restore use its key's text (source_table)."""
    import pyarrow as pa

    from celery_archive.backends import PurgeBatch, TargetConfig, open_target
    from celery_archive.backends.redis.source import RedisSource, RedisSourceConfig

    app = redis_app(prefix)
    app.backend.store_result("v1-0", 7, "SUCCESS")
    key = f"{prefix}celery-task-meta-v1-0"
    client = redis.Redis.from_url(REDIS_URL)
    value = client.get(key)
    table = pa.table({"source_table": [key], "raw_key": pa.array([None], pa.binary()), "raw_value": [value]})
    source = RedisSource(RedisSourceConfig(REDIS_URL, key_prefix=prefix))
    assert source.purge(PurgeBatch("task", table)) == (1, 0) and client.get(key) is None
    source.close()
    target = open_target(TargetConfig(REDIS_URL))
    rec = {"storage_format": "celery-redis", "kind": "task", "task_id": "v1-0", "source_table": key, "raw_key": None, "raw_value": value}
    assert target.put([rec], "skip").restored == 1
    target.close()
    assert app.AsyncResult("v1-0").get(timeout=5) == 7
    client.close()
