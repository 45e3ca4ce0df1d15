"""A Redis Cluster as a source and a restore target, on a real 3-primary cluster the tests start
(the redis_cluster fixture).

Celery has no Redis Cluster result backend, so the results are written by Celery's own
RedisBackend pointed at the primary that serves each key's slot (redis://127.0.0.1:PORT/0):
the exact keys and values Celery writes, spread over the cluster's nodes as a cluster-aware
client would spread them."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import ssl
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from helpers import after_extract, archive, read_archive, redis_app
from redis.cluster import RedisCluster

from celery_archive.backends.redis.cluster import parse
from celery_archive.errors import ConfigError, SourceError


class Cluster:
    """The test cluster under a key prefix of this test's own, with a Celery app per primary."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.prefix = f"cac{secrets.token_hex(4)}_"
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2]) + "/0"
        self.client = RedisCluster(host="127.0.0.1", port=ports[0])
        self._apps: dict[tuple[str, Any], Any] = {}

    def key(self, tid: str, kind: str = "task") -> str:
        return f"{self.prefix}celery-{'task' if kind == 'task' else 'taskset'}-meta-{tid}"

    def port_of(self, key: str) -> int:
        self.client.nodes_manager.initialize()
        return int(self.client.get_node_from_key(key).port)

    def port_of_slot(self, slot: int) -> int:
        self.client.nodes_manager.initialize()
        return int(self.client.nodes_manager.get_node_from_slot(slot).port)

    def app(self, tid: str, kind: str = "task", **conf: Any) -> Any:
        """A Celery app whose RedisBackend writes to the primary that serves ``tid``'s key."""
        port = self.port_of(self.key(tid, kind))
        at = (f"127.0.0.1:{port}", tuple(sorted(conf.items())))
        if at not in self._apps:
            self._apps[at] = redis_app(self.prefix, url=f"redis://127.0.0.1:{port}/0", **conf)
        return self._apps[at]

    def keys(self) -> dict[str, bytes]:
        """Every key of this test on any primary -> its value."""
        out = {}
        for node in self.client.get_primaries():
            conn = self.client.get_redis_connection(node)
            out.update({k.decode(): conn.get(k) for k in conn.scan_iter(match=f"{self.prefix}*")})
        return out

    def by_node(self) -> dict[int, int]:
        """port -> how many of this test's keys that primary holds."""
        out: dict[int, int] = {}
        for node in self.client.get_primaries():
            conn = self.client.get_redis_connection(node)
            out[int(node.port)] = sum(1 for _ in conn.scan_iter(match=f"{self.prefix}*"))
        return out

    def clear(self) -> None:
        import gc

        self._apps.clear()
        gc.collect()  # AsyncResults unsubscribe as they go: while the cluster still runs
        for key in self.keys():
            self.client.delete(key)
        self.client.close()


@pytest.fixture
def cl(redis_cluster: list[int]) -> Iterator[Cluster]:
    c = Cluster(redis_cluster)
    yield c
    c.clear()


def write(cl: Cluster, n: int = 45) -> dict[str, Any]:
    """Celery results on every primary: successes, a failure, a revocation, a saved group an
    hour old and an unfinished task; returns task id -> what get() gives for the finished ones."""
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    out: dict[str, Any] = {}
    for i in range(n):
        tid = f"ok-{i}"
        cl.app(tid).backend.store_result(tid, {"n": i, "pair": [1, 2]}, "SUCCESS",
                                         request=Context(id=tid, task="shop.checkout", args=[i], kwargs={}, hostname="w1"))
        out[tid] = {"n": i, "pair": [1, 2]}
    try:
        raise ValueError("card declined", 7)
    except ValueError as exc:
        cl.app("fail-0").backend.mark_as_failure("fail-0", exc, traceback=traceback.format_exc())
    out["fail-0"] = ValueError
    cl.app("revoked-0").backend.mark_as_revoked("revoked-0", "terminated")
    out["revoked-0"] = None
    group = cl.app("group-0", "group", result_expires=dt.timedelta(hours=23))  # an hour old: see helpers.hour_old
    group.backend.save_group("group-0", GroupResult("group-0", [AsyncResult("ok-0", app=group)], app=group))
    cl.app("started-0").backend.store_result("started-0", {"pid": 1}, "STARTED")
    return out


def run_at(cl: Cluster, sink: Path, **kw: Any) -> Any:
    return archive(cl.url, sink, older_than="1s", now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2),
                   key_prefix=cl.prefix, **kw)


def test_cluster_archive_purge_restore_round_trip(cl: Cluster, tmp_path: Path) -> None:
    expected = write(cl)
    spread = cl.by_node()
    assert len(spread) == 3 and all(n >= 5 for n in spread.values()), spread  # every primary holds results
    before = cl.keys()
    sink = tmp_path / "archive"

    report = run_at(cl, sink)

    records = read_archive(sink)  # fails if any id was archived twice
    assert set(records) == set(expected) | {"group-0"}
    assert report.deleted == report.verified == len(records) and report.skipped_changed == 0
    assert report.source_counts.get("moved", 0) == 0 and report.source_counts.get("unfinished") == 1, report.source_counts
    assert set(cl.keys()) == {cl.key("started-0")}
    for rec in records.values():
        assert rec["raw_value"] == before[rec["source_table"]] and rec["storage_format"] == "celery-redis"
    assert run_at(cl, tmp_path / "again").verified == 0  # nothing left to take

    ids = sorted(records)
    proc = cli("restore", *ids, "--sink", str(sink), "--into", cl.url, "--ttl", "2h", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["restored"] == len(ids)
    for tid in ids:
        key = cl.key(tid, "group" if tid == "group-0" else "task")
        assert cl.client.get(key) == before[key]  # the original key and bytes, on the node of its slot
        assert 7_100 < cl.client.ttl(key) <= 7_200
    for tid, value in expected.items():
        result = cl.app(tid).AsyncResult(tid)
        if value is ValueError:
            with pytest.raises(ValueError, match="card declined"):
                result.get(timeout=5)
        elif value is None:
            assert result.state == "REVOKED"
        else:
            assert result.get(timeout=5) == value
    again = cli("restore", "ok-1", "--sink", str(sink), "--into", cl.url, "--on-conflict", "fail", "--json")
    assert again.returncode == 6 and json.loads(again.stdout)["error_type"] == "ConflictError"


def test_cluster_key_changed_after_read_is_not_deleted(cl: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(cl, n=6)
    after_extract(monkeypatch, lambda: cl.app("fail-0").backend.store_result("fail-0", "fixed on retry", "SUCCESS"))

    report = run_at(cl, tmp_path / "archive")

    assert report.skipped_changed == 1 and report.deleted == report.verified - 1
    assert cl.app("fail-0").AsyncResult("fail-0").get(timeout=5) == "fixed on retry"
    assert read_archive(tmp_path / "archive")["fail-0"]["status"] == "FAILURE"
    assert set(cl.keys()) == {cl.key("fail-0"), cl.key("started-0")}


def test_bad_cluster_urls_name_the_problem(redis_cluster: list[int], tmp_path: Path) -> None:
    from celery_archive import RunConfig, parse_duration, run

    def attempt(url: str) -> Exception:
        with pytest.raises((ConfigError, SourceError)) as got:
            run(RunConfig(source=url, sink=str(tmp_path / "a"), older_than=parse_duration("1d")))
        assert "s3cret" not in str(got.value)
        return got.value

    assert "is not host:port" in str(attempt("redis+cluster://:s3cret@127.0.0.1/0"))
    assert "database 0 only" in str(attempt(f"redis+cluster://:s3cret@127.0.0.1:{redis_cluster[0]}/3"))
    assert "unknown option 'bogus'" in str(attempt(f"redis+cluster://:s3cret@127.0.0.1:{redis_cluster[0]}/0?bogus=1"))
    tls_option = f"127.0.0.1:{redis_cluster[0]}/0?ssl_cert_reqs=none"
    assert "needs a TLS connection: use rediss+cluster://" in str(attempt(f"redis+cluster://:s3cret@{tls_option}"))
    assert parse(f"rediss+cluster://:s3cret@{tls_option}")[1] | {"password": None} == {
        "ssl": True, "ssl_cert_reqs": ssl.CERT_NONE, "password": None, "username": None}
    assert parse("redis+cluster://u:p%40ss@[::1]:7000,10.0.0.2:7001/0") == (
        [("::1", 7000), ("10.0.0.2", 7001)], {"password": "p@ss", "username": "u"})
    down = attempt("redis+cluster://:s3cret@127.0.0.1:1,127.0.0.1:2/0")
    assert isinstance(down, SourceError) and "connecting to the Redis Cluster" in str(down) and ":***@" in str(down)
    single = attempt("redis+cluster://127.0.0.1:6379/0")  # a server without cluster-enabled
    assert isinstance(single, SourceError) and "cluster" in str(single).lower()
    proc = cli("run", "--source", "redis+cluster://:s3cret@127.0.0.1:1/0", "--sink", str(tmp_path / "b"), "--older-than", "1d")
    assert proc.returncode == 1 and "connecting to the Redis Cluster" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr


def reshard(port: int, source: str, target: str, slots: int) -> None:
    """Move ``slots`` slots, with their keys, from node ``source`` to ``target`` (ids): redis-cli's own resharding."""
    done = subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{port}", "--cluster-from", source, "--cluster-to", target,
                           "--cluster-slots", str(slots), "--cluster-yes"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def move_slots(cl: Cluster, slots: set[int], to_port: int) -> None:
    """Resharding as redis-cli does it, for chosen slots: IMPORTING on the target, MIGRATING on
    the owner, MIGRATE of the slot's keys, then the slot assigned to the target on every node."""
    import redis

    nodes = {int(n.port): redis.Redis(port=int(n.port)) for n in cl.client.get_primaries()}
    ids = {port: c.execute_command("CLUSTER", "MYID").decode() for port, c in nodes.items()}
    for slot in slots:
        src = cl.port_of_slot(slot)
        if src == to_port:
            continue
        nodes[to_port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
        nodes[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
        while keys := nodes[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            nodes[src].execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        for c in (nodes[to_port], nodes[src], *nodes.values()):
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
    for c in nodes.values():
        c.close()


def test_resharding_during_a_run_counts_moved_keys_and_loses_none(cl: Cluster, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots move twice during a run: while the first primary is being scanned (its keys in those
    slots move to the primary scanned last, and keys of that one move to it), and after the
    extraction, before the purge. Every result is archived once over two runs, and none is lost."""
    from redis.crc import key_slot

    import celery_archive.backends.redis.cluster.source as cluster_source

    expected = write(cl, n=90)
    ids = set(expected) | {"group-0"}
    ports = sorted(cl.by_node())
    first, middle, last = ports
    on = {p: [tid for tid in sorted(expected) if cl.port_of(cl.key(tid)) == p] for p in ports}
    while_scanning = {key_slot(cl.key(t).encode()) for t in on[first][:6]}
    into_first = {key_slot(cl.key(t).encode()) for t in on[last][:4]}
    before_purge = {key_slot(cl.key(t).encode()) for t in on[middle][:5]}
    real_load = cluster_source.RedisClusterSource._load
    moves: list[str] = []

    def load(self: Any, client: Any, batch: list[bytes]) -> Any:
        if not moves:  # the first batch SCAN listed, of the first primary: move slots now
            moves.append("scan")
            move_slots(cl, while_scanning, last)
            move_slots(cl, into_first, first)
        return real_load(self, client, batch)

    monkeypatch.setattr(cluster_source.RedisClusterSource, "_load", load)
    after_extract(monkeypatch, lambda: move_slots(cl, before_purge, last))
    sink = tmp_path / "archive"

    one = run_at(cl, sink, batch_size=10)

    assert moves == ["scan"]
    taken = set(read_archive(sink))
    left = {k.split("-meta-", 1)[1] for k in cl.keys()} - {"started-0"}
    assert taken.isdisjoint(left) and taken | left == ids  # each result in the archive or in the cluster, never in neither
    assert one.source_counts["moved"] >= len(while_scanning) + len(into_first) and len(left) >= 6
    assert one.source_counts["moved_at_purge"] >= 5 and one.deleted == one.verified == len(taken)
    assert {t for t in on[middle][:5]} <= taken  # moved after they were read: deleted on their new node

    two = run_at(cl, sink, batch_size=10)

    assert two.source_counts.get("moved", 0) == 0 and two.verified == two.deleted == len(left)
    assert set(read_archive(sink)) == ids  # every result archived once, over the two runs
    assert set(cl.keys()) == {cl.key("started-0")}


def test_readme_cluster_examples_run_as_written(cl: Cluster, tmp_path: Path) -> None:
    """The README's Redis Cluster examples, on the test cluster (its ports and this test's key
    prefix in place of the README's), on results Redis would expire within the hour."""
    import shlex

    from test_cli import readme_examples

    lines = readme_examples(cluster=True)
    assert len(lines) == 2
    for i in range(4):
        tid = f"ok-{i}"
        cl.app(tid, result_expires=1800).backend.store_result(tid, {"n": i}, "SUCCESS")
    seeds = ",".join(f"127.0.0.1:{p}" for p in cl.ports[:2])
    for line in lines:
        args = shlex.split(line.replace("127.0.0.1:7000,127.0.0.1:7001", seeds).replace("ca_cluster_", cl.prefix))[1:]
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
        if args[0] == "run":
            report = json.loads(out.stdout)
            assert report["command"] == "run" and report["deleted"] == report["verified"] == 4
            assert set(cl.keys()) == set()
    assert cl.app("ok-1").AsyncResult("ok-1").get(timeout=5) == {"n": 1}
    assert 7_100 < cl.client.ttl(cl.key("ok-1")) <= 7_200 and set(cl.keys()) == {cl.key("ok-1")}


def test_a_cluster_run_in_shards_takes_each_result_once(cl: Cluster, tmp_path: Path) -> None:
    """``--shards 3`` on a cluster: a shard per primary, each SCANning its own node; together
    exactly what a run in one piece takes, each result once, one commit."""
    expected = write(cl)
    sink = tmp_path / "archive"

    report = run_at(cl, sink, shards=3)

    assert len(report.shards) == 3 and all(s["verified"] > 0 for s in report.shards), report.shards
    records = read_archive(sink)  # fails if any id was archived twice
    assert set(records) == set(expected) | {"group-0"} and report.deleted == report.verified == len(records)
    assert set(cl.keys()) == {cl.key("started-0")}
    assert len(list((sink / "manifests").glob("*.json"))) == 1


def test_a_slot_moved_between_the_shards_scans_is_taken_by_neither_shard(cl: Cluster, tmp_path: Path) -> None:
    """The shards of a run are fixed when it starts, with the slot map of that moment: a slot that
    moves from one shard's primary to another's before they scan is taken by neither (counted
    moved, left for the next run), never by both."""
    from redis.crc import key_slot

    from celery_archive.backends import open_source
    from celery_archive.backends.shard import restrict, split
    from celery_archive.config import RunConfig

    expected = write(cl, n=60)
    ports = sorted(cl.by_node())
    moved = [t for t in sorted(expected) if cl.port_of(cl.key(t)) == ports[0]][:5]
    cfg = RunConfig(source=cl.url, sink=str(tmp_path / "a"), key_prefix=cl.prefix, older_than=dt.timedelta(seconds=1))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # naive UTC, as a run's clock
    cutoff = now + dt.timedelta(seconds=1)
    planner = open_source(cfg)
    planner.open()
    shards = split(planner, cutoff, 3)
    planner.close()
    assert len(shards) == 3
    move_slots(cl, {key_slot(cl.key(t).encode()) for t in moved}, ports[2])  # onto the last shard's primary

    taken: list[str] = []
    for shard in shards:
        source = open_source(cfg)
        source.open()
        restrict(source, shard)
        for table in source.extract(cutoff, 100, "r", now):
            taken += table.column("task_id").to_pylist()
        source.close()
    assert len(taken) == len(set(taken)), "a result taken by two shards"
    assert set(moved).isdisjoint(taken) and set(taken) == (set(expected) | {"group-0"}) - set(moved)
