"""The sink contract, run against every sink: a local directory (path and file:// URL), S3 on
moto's server, and S3 on LocalStack (where its Python 3.13 runtime is present)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import new_bucket, s3_client

from celery_archive.errors import ConfigError, ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.sinks import Sink, open_sink

SinkFactory = Callable[[], Sink]


@pytest.fixture(params=["path", "file-url", "s3", "localstack"])
def sink(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sink:
    if request.param == "localstack":
        endpoint = request.getfixturevalue("localstack")
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        return open_sink(f"s3://{new_bucket(s3_client(endpoint))}/archive root")
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return open_sink(f"s3://{bucket}/archive root")
    root = tmp_path / "sink root"
    return open_sink(str(root) if request.param == "path" else root.as_uri())


def test_put_then_open_stat_list(sink: Sink, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"a" * 3_000_000)
    info = sink.put("data/date=2026-01-01/x.parquet", src)
    assert info.size == 3_000_000
    sink.put_bytes("manifests/r.json", b"{}")
    with sink.open("data/date=2026-01-01/x.parquet") as f:
        assert f.read() == b"a" * 3_000_000
        f.seek(10)
        assert f.read(3) == b"aaa"
    assert sink.stat("manifests/r.json").size == 2
    assert [o.key for o in sink.list()] == ["data/date=2026-01-01/x.parquet", "manifests/r.json"]
    assert [o.key for o in sink.list("manifests/")] == ["manifests/r.json"]
    assert list(sink.list("nothing/")) == []


def test_ranged_reads_and_prefix_listing(sink: Sink) -> None:
    data = bytes(range(256)) * 4
    sink.put_bytes("index/log/run-a.parquet", data)
    sink.put_bytes("index/logbook", b"x")
    sink.put_bytes("data/date=2026-01-01/f.jsonl", b"y")
    assert sink.read("index/log/run-a.parquet") == data
    assert sink.read("index/log/run-a.parquet", 300, 10) == data[300:310]
    assert sink.read("index/log/run-a.parquet", 1000) == data[1000:]
    assert sink.read("index/log/run-a.parquet", 1020, 100) == data[1020:]  # past the end: what there is
    assert [o.key for o in sink.list("index/log/")] == ["index/log/run-a.parquet"]
    assert [o.key for o in sink.list("index/log")] == ["index/log/run-a.parquet", "index/logbook"]
    assert [o.key for o in sink.list("data/date=2026")] == ["data/date=2026-01-01/f.jsonl"]
    with pytest.raises(ObjectNotFoundError):
        sink.read("index/log/missing")


def test_never_overwrites(sink: Sink, tmp_path: Path) -> None:
    sink.put_bytes("k", b"first")
    with pytest.raises(ObjectExistsError):
        sink.put_bytes("k", b"second")
    src = tmp_path / "s"
    src.write_bytes(b"third")
    with pytest.raises(ObjectExistsError):
        sink.put("k", src)
    with sink.open("k") as f:
        assert f.read() == b"first"


def test_concurrent_creates_one_wins(sink: Sink) -> None:
    wins, losses = [], []

    def attempt(i: int) -> None:
        try:
            sink.put_bytes("lock", str(i).encode())
            wins.append(i)
        except ObjectExistsError:
            losses.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 15
    with sink.open("lock") as f:
        assert f.read() == str(wins[0]).encode()


def test_spool_root_is_never_listed(sink: Sink) -> None:
    spool = sink.spool_root()
    if spool is None:
        return  # a remote sink stages elsewhere
    (spool / "run-x").mkdir(parents=True)
    (spool / "run-x" / "data.parquet").write_bytes(b"staged")
    sink.put_bytes("manifests/r.json", b"{}")
    assert [o.key for o in sink.list()] == ["manifests/r.json"]


def test_missing_objects_and_delete(sink: Sink) -> None:
    with pytest.raises(ObjectNotFoundError):
        sink.open("nope")
    with pytest.raises(ObjectNotFoundError):
        sink.stat("nope")
    sink.delete("nope")  # not an error
    sink.put_bytes("a/b", b"x")
    sink.delete("a/b")
    with pytest.raises(ObjectNotFoundError):
        sink.stat("a/b")
    assert list(sink.list()) == []


def test_no_partial_object_is_ever_listed(sink: Sink, tmp_path: Path) -> None:
    src = tmp_path / "gone"
    with pytest.raises(SinkError):
        sink.put("x", src)  # the source vanished mid-put
    assert list(sink.list()) == []
    with pytest.raises(ObjectNotFoundError):
        sink.stat("x")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "../up"])
def test_keys_stay_inside_the_root(sink: Sink, key: str) -> None:
    with pytest.raises(SinkError):
        sink.put_bytes(key, b"x")


@pytest.mark.parametrize("url", ["", "s3:///no-bucket", "ftp://h/x", "file://otherhost/x"])
def test_unsupported_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_sink(url)


def test_sweep_leaves_complete_objects_alone(sink: Sink) -> None:
    sink.put_bytes("data/date=2026-01-01/a.parquet", b"complete")
    sink.put_bytes("manifests/r.json", b"{}")
    assert sink.sweep(0) == 0
    assert [o.key for o in sink.list()] == ["data/date=2026-01-01/a.parquet", "manifests/r.json"]


def test_erase_removes_the_object_and_nothing_beside_it(sink: Sink) -> None:
    sink.put_bytes("data/date=2026-01-01/r-00001.jsonl", b"secret")
    sink.put_bytes("data/date=2026-01-01/r-00001.jsonl.more", b"kept")
    assert sink.retention("data/date=2026-01-01/r-00001.jsonl") is None  # nothing holds it
    sink.erase("data/date=2026-01-01/r-00001.jsonl")
    sink.erase("data/date=2026-01-01/r-00001.jsonl")  # missing: not an error
    assert [o.key for o in sink.list("data/")] == ["data/date=2026-01-01/r-00001.jsonl.more"]
    assert sink.retention("data/date=2026-01-01/gone.jsonl") is None
    with pytest.raises(ObjectNotFoundError):
        sink.read("data/date=2026-01-01/r-00001.jsonl")
