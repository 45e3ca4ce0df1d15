"""Shared test helpers: reading an archive the way a user would, a clock for runs, and
Celery's Redis backend on the test server."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import secrets
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from celery_archive import RunConfig, parse_duration, run
from celery_archive.pipeline.run import RunReport

REDIS_URL = os.environ.get("CA_TEST_REDIS", "redis://127.0.0.1:6379/0")


# Run as the console script runs, reporting at exit (on stderr's last line) what the process had imported.
IMPORTS_PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["celery-archive", *sys.argv[1:]]
from celery_archive.cli import entry
entry()
"""


def later(seconds: float = 5) -> dt.datetime:
    """An instant ``seconds`` from now (aware UTC): a run given ``now=later()`` counts ages as
    if that much time had passed since the results were written, without waiting for it."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


def archive(source: str, sink: Path, older_than: str = "30d", now: dt.datetime | None = None, **kw: Any) -> RunReport:
    """One run (in this process); ``now`` is the instant it counts ages from (default: the clock)."""
    report = run(RunConfig(source=source, sink=str(sink), older_than=parse_duration(older_than), **kw), now=now)
    assert isinstance(report, RunReport)
    return report


def read_archive(sink: Path, fmt: str = "parquet") -> dict[str, dict[str, Any]]:
    """task_id -> record, read with pyarrow's dataset API over the Hive layout."""
    files = [str(p) for p in sorted((sink / "data").rglob("*")) if p.is_file()]
    if not files:
        return {}
    if fmt == "parquet":
        table = ds.dataset(files, format="parquet", partitioning="hive", partition_base_dir=str(sink / "data")).to_table()
        rows = table.to_pylist()
    else:
        import duckdb

        con = duckdb.connect()
        rows = con.sql(f"select * from read_json_auto({files!r}, hive_partitioning=true, format='newline_delimited')").to_arrow_table().to_pylist()
    out = {}
    for r in rows:
        assert r["task_id"] not in out, f"{r['task_id']} archived twice"
        out[r["task_id"]] = r
    return out


def utc(ts: dt.datetime) -> dt.datetime:
    """A stored naive UTC datetime (or aware one) as an aware UTC datetime."""
    return ts.replace(tzinfo=dt.timezone.utc) if ts.tzinfo is None else ts.astimezone(dt.timezone.utc)


def data_files(sink: Path) -> list[Path]:
    return sorted(p for p in (sink / "data").rglob("*") if p.is_file() and not p.name.startswith(".")) if (sink / "data").exists() else []


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


class Hostile:
    """Unpickling this runs a shell command, if the unpickler lets it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def redis_app(prefix: str, url: str = REDIS_URL, serializer: str = "json", **conf: Any) -> Any:
    """A Celery app whose RedisBackend writes under the global_keyprefix ``prefix``."""
    from celery import Celery

    app = Celery(f"r{secrets.token_hex(3)}", backend=url, set_as_current=False)
    app.conf.update(result_serializer=serializer, result_accept_content=[serializer, "json"], accept_content=[serializer, "json"],
                    result_extended=True, result_backend_transport_options={"global_keyprefix": prefix}, **conf)
    return app


def keys(prefix: str, url: str = REDIS_URL) -> dict[str, bytes]:
    """Every key under ``prefix`` -> its value."""
    import redis

    client = redis.Redis.from_url(url)
    out = {k.decode(): client.get(k) or b"" for k in client.scan_iter(match=f"{prefix}*")}
    client.close()
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> None:
    """Poll ``predicate`` until it holds (a state another process or thread reaches), or fail."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def moto_server(key: str = "testing", secret: str = "testing-secret") -> tuple[Any, dict[str, str]]:
    """moto's S3 server on 127.0.0.1 (real HTTP), started, and the environment that points boto3 at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                    "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_sql_results(app: Any) -> dict[str, str]:
    """Results of every kind Celery stores; returns task id -> what it is."""
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    b = app.backend
    kinds: dict[str, str] = {}

    def req(tid: str, name: str) -> Context:
        return Context(id=tid, task=name, args=[1, "two", [3]], kwargs={"when": dt.date(2026, 1, 2)},
                       hostname="worker1@host", retries=2, delivery_info={"routing_key": "billing"})

    for i in range(25):
        tid = f"ok-{i}"
        b.store_result(tid, {"n": i, "pair": (1, 2), "at": dt.datetime(2026, 3, 4, 5, 6, 7), "price": decimal.Decimal("9.10")},
                       "SUCCESS", request=req(tid, "shop.checkout"))
        kinds[tid] = "success"
    for i in range(3):
        tid = f"fail-{i}"
        try:
            raise ValueError("card declined", i)
        except ValueError as exc:
            b.mark_as_failure(tid, exc, traceback=traceback.format_exc(), request=req(tid, "shop.charge"))
        kinds[tid] = "failure"
    b.mark_as_revoked("revoked-0", "terminated", request=req("revoked-0", "shop.slow"))
    kinds["revoked-0"] = "revoked"
    b.store_result("started-0", {"pid": 1, "hostname": "w"}, "STARTED", request=req("started-0", "shop.slow"))
    kinds["started-0"] = "started"
    gid = "group-0"
    b.save_group(gid, GroupResult(gid, [AsyncResult("ok-0", app=app), AsyncResult("ok-1", app=app)], app=app))
    return kinds


def after_extract(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Make runs call ``action`` once extraction is done, before anything is verified or purged."""
    import celery_archive.pipeline.run as run_mod

    real_open = run_mod.open_source

    def open_source(cfg: Any) -> Any:
        source = real_open(cfg)
        extract = source.extract

        def extract_then_act(*a: Any, **kw: Any) -> Any:
            yield from extract(*a, **kw)
            action()

        source.extract = extract_then_act
        return source

    monkeypatch.setattr(run_mod, "open_source", open_source)


def write_redis_results(app: Any) -> None:
    """Results of every kind Celery's RedisBackend stores (a saved group an hour old, chord bookkeeping)."""
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    b = app.backend
    for i in range(12):
        b.store_result(f"ok-{i}", {"n": i, "pair": (1, 2)}, "SUCCESS",
                       request=Context(id=f"ok-{i}", task="shop.checkout", args=[i, "x"], kwargs={"k": i}, hostname="w1",
                                       retries=0, delivery_info={"routing_key": "billing"}))
    try:
        raise ValueError("card declined", 7)
    except ValueError as exc:
        b.mark_as_failure("fail-0", exc, traceback=traceback.format_exc())
    b.mark_as_revoked("revoked-0", "terminated")
    b.store_result("started-0", {"pid": 1}, "STARTED")
    hour_old(app).backend.save_group("group-0", GroupResult("group-0", [AsyncResult("ok-0", app=app)], app=app))
    b.set_chord_size("group-0", 3)  # chord bookkeeping: group-0.s


def hour_old(app: Any) -> Any:
    """``app`` as it was an hour ago, for saved groups: Celery stores no date for them, so their
    age is result_expires (a day) less the TTL left; an hour ago the TTL was set an hour shorter
    than now. (Tasks carry date_done: a run's ``now`` ages them.)"""
    conf = app.conf
    return redis_app(conf.result_backend_transport_options["global_keyprefix"], conf.result_backend, conf.result_serializer,
                     result_expires=dt.timedelta(hours=23))


def _cluster_ports(n: int) -> list[int]:
    """``n`` ports of 127.0.0.1 that are free, each with its cluster bus port (port + 10000) free too."""
    import random
    import socket

    out: list[int] = []
    while len(out) < n:
        port = random.randrange(20_000, 50_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        out.append(port)
    return out


@contextmanager
def redis_cluster_started(where: Path, primaries: int = 3) -> Iterator[list[int]]:
    """A real Redis Cluster (no replicas) on free ports of 127.0.0.1, its files under ``where``:
    redis-server --cluster-enabled yes per node, redis-cli --cluster create, cluster_state:ok on
    every node; its ports while the block runs, the servers stopped after."""
    import subprocess
    import time

    import redis

    ports = _cluster_ports(primaries)
    procs = []
    for port in ports:
        node = where / str(port)
        node.mkdir()
        procs.append(subprocess.Popen(["redis-server", "--cluster-enabled", "yes", "--port", str(port), "--bind", "127.0.0.1",
                                       "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node), "--save", "",
                                       "--appendonly", "no", "--cluster-node-timeout", "5000"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    clients = [redis.Redis(port=port) for port in ports]
    try:
        deadline = time.monotonic() + 20
        for client in clients:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        pytest.fail("redis-server --cluster-enabled did not start")
                    time.sleep(0.05)
        created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                                  "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stdout + created.stderr
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
            if time.monotonic() > deadline + 30:
                pytest.fail("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        yield ports
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def counted_pages(monkeypatch: Any, module: Any) -> dict[str, int]:
    """Pages ``module.read`` (sqlite_arrow, mysql_arrow) gave as Arrow columns ("arrow"), and
    those it left to the DB-API driver ("driver"), counted while the test runs."""
    pages = {"arrow": 0, "driver": 0}
    read = module.read

    def counted(*args: object) -> object:
        got = read(*args)
        pages["arrow" if got is not None else "driver"] += 1
        return got

    monkeypatch.setattr(module, "read", counted)
    return pages
