"""Celery's Redis result backend as a source, on a real Redis server, with results written by
Celery's own RedisBackend. Each test works under its own global_keyprefix and removes it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import cli
from helpers import REDIS_URL, Hostile, after_extract, archive, free_port, keys, later, read_archive, redis_app, wait_for, write_redis_results


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle", "yaml"])
def test_redis_archive_verify_compare_and_delete(prefix: str, tmp_path: Path, serializer: str) -> None:
    app = redis_app(prefix, serializer=serializer)
    write_redis_results(app)
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}celery-task-meta-not-ours", b"\x00\x01 some other application's value")
    expected = {tid: app.AsyncResult(tid).state for tid in ["fail-0", "revoked-0"] + [f"ok-{i}" for i in range(12)]}
    written = dt.datetime.now(dt.timezone.utc)  # every result above is older than this instant
    app.backend.store_result("young-0", 1, "SUCCESS")
    before = keys(prefix)
    assert any(k.endswith(".s") for k in before), "Celery's chord size key should be there"

    report = archive(REDIS_URL, tmp_path / "archive", older_than="1s", now=written + dt.timedelta(seconds=1), serializer=serializer,
                     key_prefix=prefix)

    records = read_archive(tmp_path / "archive")
    assert set(records) == set(expected) | {"group-0"}
    assert report.deleted == report.verified == len(records) and report.skipped_changed == 0
    assert report.source_counts["not_celery"] == 1
    for tid, state in expected.items():
        rec = records[tid]
        assert rec["status"] == state and rec["storage_format"] == "celery-redis"
        assert rec["raw_value"] == before[rec["source_table"]]  # the exact stored value
        assert 0 < rec["ttl_ms"] <= 86_400_000
    assert json.loads(records["ok-3"]["result"]) == {"n": 3, "pair": [1, 2]}
    assert (records["ok-3"]["name"], records["ok-3"]["queue"]) == ("shop.checkout", "billing")
    assert json.loads(records["ok-3"]["args"]) == [3, "x"]
    fail = json.loads(records["fail-0"]["result"])
    assert fail == {"exc_type": "ValueError", "exc_message": ["card declined", 7], "exc_module": "builtins"}
    assert json.loads(records["group-0"]["result"])[0][0] == "group-0"
    left = set(keys(prefix))
    assert left == {f"{prefix}celery-task-meta-{t}" for t in ("young-0", "started-0", "not-ours")} | {f"{prefix}celery-taskset-meta-group-0.s"}
    # lossless: putting the archived bytes back makes Celery read the result again
    client.set(records["ok-3"]["source_table"], records["ok-3"]["raw_value"])
    assert app.AsyncResult("ok-3").get(timeout=5) == ({"n": 3, "pair": (1, 2)} if serializer == "pickle" else {"n": 3, "pair": [1, 2]})
    client.close()


def test_hostile_pickle_in_redis_is_not_executed(prefix: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    app = redis_app(prefix, serializer="pickle")
    app.backend.store_result("evil-0", Hostile(marker), "SUCCESS")
    archive(REDIS_URL, tmp_path / "archive", older_than="1s", now=later(), serializer="pickle", key_prefix=prefix)
    assert not marker.exists()
    rec = read_archive(tmp_path / "archive")["evil-0"]
    assert rec["status"] == "SUCCESS" and rec["result"] is None
    assert rec["decode_error"] == "result: refused to load posix.system: only plain data types are admitted"


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "lzma"])
def test_celery_57_compressed_results(prefix: str, tmp_path: Path, compression: str) -> None:
    app = redis_app(prefix, result_compression=compression)
    value = {"rows": list(range(200)), "text": "x" * 300}
    app.backend.store_result("big-0", value, "SUCCESS")
    stored = keys(prefix)[f"{prefix}celery-task-meta-big-0"]
    assert stored.startswith(b"\x00celery-compressed\x00")
    archive(REDIS_URL, tmp_path / "archive", older_than="1s", now=later(), key_prefix=prefix)
    rec = read_archive(tmp_path / "archive")["big-0"]
    assert rec["raw_value"] == stored and rec["compression"] and json.loads(rec["result"]) == value


def test_redis_dry_run_counts_and_changes_nothing(prefix: str, tmp_path: Path) -> None:
    app = redis_app(prefix)
    write_redis_results(app)
    before = keys(prefix)
    # a CLI run takes no clock: --older-than 0s takes whatever was written before it started
    out = cli("run", "--source", REDIS_URL, "--key-prefix", prefix, "--sink", str(tmp_path / "a"), "--older-than", "0s",
              "--dry-run", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["selected"] == 15
    assert report["by_status"] == {"SUCCESS": 12, "FAILURE": 1, "REVOKED": 1, "(group)": 1}
    assert keys(prefix) == before and not (tmp_path / "a").exists()


def test_a_key_rewritten_after_it_was_read_survives(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = redis_app(prefix)
    write_redis_results(app)
    after_extract(monkeypatch, lambda: app.backend.store_result("fail-0", "fixed on retry", "SUCCESS"))
    report = archive(REDIS_URL, tmp_path / "archive", older_than="1s", now=later(), key_prefix=prefix)
    assert report.skipped_changed == 1
    assert app.AsyncResult("fail-0").get(timeout=5) == "fixed on retry"
    assert read_archive(tmp_path / "archive")["fail-0"]["status"] == "FAILURE"


def test_results_about_to_expire_and_results_that_never_do(prefix: str, tmp_path: Path) -> None:
    short = redis_app(prefix, result_expires=30)
    short.backend.store_result("short-0", 1, "SUCCESS")  # young, but Redis drops it in 30 s
    forever = redis_app(prefix, result_expires=None)
    forever.backend.store_result("forever-0", 2, "SUCCESS")
    plain = archive(REDIS_URL, tmp_path / "a1", older_than="1d", key_prefix=prefix)
    assert plain.selected == 0 and plain.source_counts["no_ttl"] == 1
    margin = archive(REDIS_URL, tmp_path / "a2", older_than="1d", key_prefix=prefix, expiring_within=dt.timedelta(minutes=1))
    assert set(read_archive(tmp_path / "a2")) == {"short-0"} and margin.deleted == 1
    aged = archive(REDIS_URL, tmp_path / "a3", older_than="1s", now=later(), key_prefix=prefix)
    assert set(read_archive(tmp_path / "a3")) == {"forever-0"} and aged.source_counts["no_ttl"] == 1


def answers(ask: Any) -> bool:
    """Whether a server that is starting answers ``ask`` (truthy) yet."""
    try:
        return bool(ask())
    except redis.ConnectionError:
        return False


def _redis_server(*args: str) -> Any:
    import shutil
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; run `bash scripts/services.sh`")
    return subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A real Redis server of our own that requires a password and listens on a Unix socket too."""
    workdir = tmp_path_factory.mktemp("redis")
    port, sock = free_port(), workdir / "redis.sock"
    proc = _redis_server("--bind", "127.0.0.1", "--port", str(port), "--unixsocket", str(sock), "--requirepass", "the-right-one",
                         "--save", "", "--appendonly", "no", "--dir", str(workdir))
    wait_for(lambda: answers(lambda: redis.Redis(port=port, password="the-right-one").ping()), what="our Redis server")
    yield port, sock
    proc.terminate()
    proc.wait()


@pytest.fixture
def redis_with_password(own_redis: tuple[int, Path]) -> int:
    return own_redis[0]


def test_redis_socket_and_sentinel_urls(own_redis: tuple[int, Path], tmp_path: Path) -> None:
    """redis+socket:// and sentinel:// as Celery writes them, against real servers."""
    port, sock = own_redis
    app = redis_app("", f"redis://:the-right-one@127.0.0.1:{port}/3")
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {port} 1\n"
                    "sentinel auth-pass mymaster the-right-one\n")
    sentinel = _redis_server(str(conf), "--sentinel")
    try:
        wait_for(lambda: answers(lambda: redis.Redis(port=sentinel_port).sentinel_get_master_addr_by_name("mymaster")),
                 what="the sentinel to know its master")
        for n, url, extra in [
            (0, f"redis+socket://:the-right-one@{sock}?virtual_host=3", []),
            (1, f"sentinel://:the-right-one@127.0.0.1:{sentinel_port}/3", ["--master-name", "mymaster"]),
        ]:
            app.backend.store_result(f"via-{n}", n, "SUCCESS")
            out = cli("run", "--source", url, "--sink", str(tmp_path / f"a{n}"), "--older-than", "0s", "--json", *extra)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["deleted"] == 1 and "the-right-one" not in out.stdout
            assert set(read_archive(tmp_path / f"a{n}")) == {f"via-{n}"}
    finally:
        sentinel.terminate()
        sentinel.wait()


def test_a_wrong_redis_password_is_named_not_printed(tmp_path: Path, redis_with_password: int) -> None:
    for extra in ([], ["--json"]):
        out = cli("run", "--source", f"redis://:Sup3r-s3cret@127.0.0.1:{redis_with_password}/0", "--sink", str(tmp_path / "a"),
                  "--older-than", "1d", *extra)
        assert out.returncode == 1
        assert "authentication failed" in out.stdout + out.stderr and "***" in out.stdout + out.stderr
        assert "Sup3r-s3cret" not in out.stdout + out.stderr
    ok = cli("run", "--source", f"redis://:the-right-one@127.0.0.1:{redis_with_password}/0", "--sink", str(tmp_path / "b"),
             "--older-than", "1d", "--json")
    assert ok.returncode == 0 and "the-right-one" not in ok.stdout + ok.stderr


@pytest.mark.parametrize("url,message", [
    ("redis://127.0.0.1:1/0", "Connection refused"),
    ("redis://127.0.0.1:6379/99", "database number in --source does not exist"),
    ("sentinel://127.0.0.1:26379/0", "needs --master-name"),
])
def test_bad_redis_sources_say_what_is_wrong(tmp_path: Path, url: str, message: str) -> None:
    out = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "1d")
    assert out.returncode in (1, 2)
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "Sup3r-s3cret" not in out.stdout + out.stderr


def test_the_one_pass_decoding_takes_what_the_general_one_takes(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """backends/redis/fast.py reads plain JSON metas in one pass: its records are the general
    decoding's (texts the same JSON), and what it does not take goes the general way."""
    import datetime as dt

    from celery_archive.backends.redis import fast
    from celery_archive.backends.redis.source import _ROW_FIELDS, RedisSource, RedisSourceConfig

    app = redis_app(prefix)
    write_redis_results(app)
    values = keys(prefix)
    source = RedisSource(RedisSourceConfig(REDIS_URL, key_prefix=prefix))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    tasks = {k: v for k, v in values.items() if "celery-task-meta-" in k}
    one_pass = {k: source._row("task", k.encode(), v, 1000, now, 86_400_000) for k, v in tasks.items()}
    assert sum(fast.task(v) is not None for v in tasks.values()) >= 14  # successes, a failure, a revoked task: all of them
    monkeypatch.setattr(fast, "task", lambda raw: None)
    general = {k: source._row("task", k.encode(), v, 1000, now, 86_400_000) for k, v in tasks.items()}
    source.close()
    assert one_pass.keys() == general.keys() and any(r is None for r in general.values())  # started-0: unfinished
    for k, row in one_pass.items():
        other = general[k]
        assert (row is None) == (other is None), k
        for name, a, b in zip(_ROW_FIELDS, row or (), other or ()):
            texts = name in ("result", "args", "kwargs", "children") and a is not None and b is not None
            assert (json.loads(a) == json.loads(b)) if texts else a == b, (k, name, a, b)
    # what the one pass leaves to the general decoding
    for raw in (b'{"result": {"__type__": "datetime", "__value__": "2026-01-01T00:00:00"}, "status": "SUCCESS"}',
                b'{"result": 1, "status": "SUCCESS", "name": 5}', b'{"result": "\xff", "status": "SUCCESS"}',
                b'{"status": "SUCCESS"}', b'{"result": NaN, "status": "SUCCESS"}', b"\x80\x04K\x01."):
        assert fast.task(raw) is None, raw


def test_a_result_nested_as_deep_as_celery_writes_is_archived_beside_others(prefix: str, tmp_path: Path) -> None:
    """msgspec stops at ~985 levels of nesting with RecursionError, which Celery's own json
    writes (a list 985 deep): the one-pass decoding leaves it to the general one, and every
    run used to fail on it with a traceback, archiving nothing."""
    app = redis_app(prefix)
    for i in range(6):
        app.backend.store_result(f"ok-{i}", i, "SUCCESS")
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}celery-task-meta-ok-5"
    nested = b"[" * 985 + b"]" * 985  # as Celery's json writes a list 985 deep (this process's stack is too deep to)
    client.set(key, client.get(key).replace(b'"result": 5', b'"result": ' + nested), keepttl=True)
    client.close()
    stored = keys(prefix)
    out = cli("run", "--source", REDIS_URL, "--key-prefix", prefix, "--sink", str(tmp_path / "a"), "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["deleted"] == 6 and keys(prefix) == {}
    record = read_archive(tmp_path / "a")["ok-5"]
    assert record["raw_value"] == stored[record["source_table"]]  # the exact bytes; its copy is past orjson's 254 levels:
    assert record["result"] is None and record["decode_error"].startswith("result:")  # named, not guessed


def test_a_value_naming_another_tasks_id_is_left_alone(prefix: str, tmp_path: Path) -> None:
    """A key whose value says it is another task's result (written there by hand) would be
    archived as that task: restore by that id then found it instead of the real one, and put
    it back under the wrong key. It is left alone, malformed, and named; the real one is kept."""
    app = redis_app(prefix)
    for i in range(5):
        app.backend.store_result(f"good-{i}", i, "SUCCESS")
    client = redis.Redis.from_url(REDIS_URL)
    real = client.get(f"{prefix}celery-task-meta-good-1")
    for name in ("impostor", "impostor-2"):  # the one-pass decoding's case, and the general one's (msgpack marker)
        value = real.replace(b'"result": 1', b'"result": 99') if name == "impostor" else \
            real.replace(b'"result": 1', b'"result": {"__type__": "bytes", "__value__": "eA=="}')
        client.set(f"{prefix}celery-task-meta-{name}", value, ex=3600)
    client.close()
    out = cli("run", "--source", REDIS_URL, "--key-prefix", prefix, "--sink", str(tmp_path / "a"), "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["deleted"] == 5 and report["source_counts"]["malformed"] == 2, report
    assert any("impostor" in e and "is not the key's" in e for e in report["source_examples"]["malformed"])
    assert set(keys(prefix)) == {f"{prefix}celery-task-meta-impostor", f"{prefix}celery-task-meta-impostor-2"}
    restored = json.loads(cli("restore", "good-1", "--sink", str(tmp_path / "a"), "--json").stdout)
    assert restored["result"] == 1
