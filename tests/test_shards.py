"""A run in shards (--shards N, local processes) on PostgreSQL: the same results archived once
and the same purge as a run in one piece; one manifest; a shard killed means no commit and
nothing deleted, and the next run finishes the work; a kill -9 loop loses and duplicates nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import age_rows, celery_app, cli, db_url, table_rows
from helpers import wait_for, write_sql_results
from kill_loop import loop
from test_lease_processes import EXE, SLOW, assert_each_once, committed_ids, data_keys, fill
from test_recovery import lease_state

from celery_archive.archive import manifest as mf
from celery_archive.backends import open_source
from celery_archive.backends.shard import split
from celery_archive.config import RunConfig, parse_duration
from celery_archive.index.packs import lookup
from celery_archive.sinks import open_sink


def seed(url: str) -> set[str]:
    """Results of every kind (Celery's own backend), 300 more successes, then a young one;
    returns the ids an archive run over 30d takes."""
    app = celery_app(url)
    kinds = write_sql_results(app)
    for i in range(120):
        app.backend.store_result(f"bulk-{i:04d}", {"i": i, "pad": "x" * 50}, "SUCCESS")
    age_rows(url, 40)
    age_rows(url, 40, table="celery_tasksetmeta")
    app.backend.store_result("young-0", {"i": -1}, "SUCCESS")
    return {t for t, k in kinds.items() if k != "started"} | {f"bulk-{i:04d}" for i in range(120)} | {"group-0"}


def cli_run(url: str, sink: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run([EXE, "run", "--source", url, "--sink", str(sink), "--older-than", "30d", "--batch-size", "50",
                           "--max-file-size", "8KiB", "--json", *extra], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return out


def test_a_sharded_run_equals_a_run_in_one_piece(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = db_url(request, "postgresql", tmp_path)
    taken = seed(url)
    whole = cli_run(url, tmp_path / "one")
    left_whole = {t: r["status"] for t, r in table_rows(url).items()}
    url = db_url(request, "postgresql", tmp_path)  # the same results again, in a fresh database
    assert seed(url) == taken
    cfg = RunConfig(source=url, sink=str(tmp_path / "four"), older_than=parse_duration("30d"), shards=4)
    source = open_source(cfg)
    cutoff = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - cfg.older_than
    shards = split(source, cutoff, 4)
    source.close()
    assert len(shards) == 4 and all(s.count == 4 for s in shards)
    sharded = cli_run(url, tmp_path / "four", "--shards", "4")
    assert {t: r["status"] for t, r in table_rows(url).items()} == left_whole  # the same purge
    assert set(left_whole) == {"started-0", "young-0"}
    for report in (whole, sharded):
        assert (report["selected"], report["archived"], report["verified"], report["deleted"]) == (len(taken),) * 4
    assert sharded["ran_on"] == "local" and [s["shard"] for s in sharded["shards"]] == [0, 1, 2, 3]
    assert sum(s["archived"] for s in sharded["shards"]) == len(taken)
    assert all(s["archived"] > 20 for s in sharded["shards"])  # sized by row counts
    sink = open_sink(str(tmp_path / "four"))
    assert mf.committed_runs(sink) == [sharded["run_id"]]  # one commit: one manifest for the four shards
    ids = Counter(committed_ids(sink))
    assert set(ids) == taken and set(ids.values()) == {1}
    assert Counter(committed_ids(open_sink(str(tmp_path / "one")))) == ids
    # every archived result is found once through the restore index (each shard wrote its part of it)
    found = lookup(sink, sorted(taken))
    assert {t: len(v) for t, v in found.items()} == dict.fromkeys(taken, 1)


def test_a_shard_killed_means_no_commit_and_the_next_run_finishes(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = db_url(request, "postgresql", tmp_path)
    taken = seed(url)
    sink = tmp_path / "archive"
    # throttled, so that the shards are mid-way when one of them is killed
    proc = subprocess.Popen([EXE, "run", "--source", url, "--sink", str(sink), "--older-than", "30d", "--batch-size", "10",
                             "--max-file-size", "4KiB", "--shards", "3", "--max-rate", "15", "--lease-ttl", "2s", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = _wait_children(proc.pid, 3)
    wait_for(lambda: len(list((sink / "data").rglob("*.parquet"))) >= 3, 60, "shard files")
    os.kill(children[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "died" in out + err, out + err
    archive = open_sink(str(sink))
    assert mf.committed_runs(archive) == []
    assert set(table_rows(url)) | set(table_rows(url, "celery_tasksetmeta")) >= taken  # nothing deleted
    again = cli_run(url, sink, "--shards", "3")
    assert again["orphans_removed"] > 0 and again["deleted"] == len(taken)
    ids = Counter(committed_ids(archive))
    assert set(ids) == taken and set(ids.values()) == {1}


def _wait_children(pid: int, n: int, timeout: float = 60) -> list[int]:
    """The shard processes of run ``pid`` (``python -m celery_archive.pipeline.shards``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                    cmd = (p / "cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"celery_archive.pipeline.shards" in cmd:
                    kids.append(int(p.name))
        if len(kids) >= n:
            return sorted(kids)
        time.sleep(0.05)
    raise AssertionError(f"run {pid} did not start {n} shard processes")


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_signal_stops_a_sharded_run_at_a_safe_point(how: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """SIGTERM to the run's process (``kill PID``, systemd's main process), or SIGINT to its
    whole process group (Ctrl-C in a terminal reaches the shard processes too): the shards take
    nothing more, what they took is committed, verified and purged, the run exits 0."""
    url = db_url(request, "postgresql", tmp_path)
    old = fill(url, "a", 2000)
    sink = str(tmp_path / "archive")
    proc = subprocess.Popen([EXE, "run", "--source", url, "--sink", sink, "--older-than", "30d", "--shards", "2", "--json", *SLOW],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_children(proc.pid, 2)
    wait_for(lambda: data_keys(open_sink(sink)), what="a shard's first data file")
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    report = json.loads(out)
    assert report["stopped_by"] == "signal" and "stopping at the next batch boundary" in err, report
    assert 0 < report["archived"] == report["deleted"] < 2000, report
    assert lease_state(Path(sink)) == "free"
    assert len(table_rows(url)) == 2001 - report["deleted"]
    assert cli("run", "--source", url, "--sink", sink, "--older-than", "30d").returncode == 0
    assert_each_once(open_sink(sink), old, url, "ayoung")


def test_a_second_signal_stops_a_sharded_run_at_once_with_its_shards(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = db_url(request, "postgresql", tmp_path)
    old = fill(url, "a", 2000)
    sink = str(tmp_path / "archive")
    proc = subprocess.Popen([EXE, "run", "--source", url, "--sink", sink, "--older-than", "30d", "--shards", "2", "--json", *SLOW],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = _wait_children(proc.pid, 2)
    wait_for(lambda: data_keys(open_sink(sink)), what="a shard's first data file")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)  # the second while the shards are still at work: nothing is committed
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and json.loads(out)["error_type"] == "Interrupted", out + err
    wait_for(lambda: not any(Path(f"/proc/{c}").exists() for c in children), 10, "the shard processes to be gone")
    assert len(table_rows(url)) == 2001  # nothing was committed, so nothing deleted
    assert cli("run", "--source", url, "--sink", sink, "--older-than", "30d").returncode == 0
    assert_each_once(open_sink(sink), old, url, "ayoung")


def test_kill_9_loop_of_a_run_in_four_shards_loses_and_duplicates_nothing(request: pytest.FixtureRequest,
                                                                           tmp_path: Path) -> None:
    url = db_url(request, "postgresql", tmp_path)
    old: set[str] = set()
    out = loop(url, str(tmp_path / "archive"), old, 3, per_round=100, extra=("--shards", "4"))
    assert len(old) == 100 * 4
    assert (out.lost, out.duplicated, out.left_in_source) == (0, 0, 0), out
    assert out.killed >= 1, out


def test_the_commit_job_checks_the_token_and_a_redelivered_one_commits_once(tmp_path: Path) -> None:
    """The commit step (a process, or the celery_archive.commit task) writes nothing for a run
    whose lease token it was not given; run twice (redelivered), the run has one commit."""
    import dataclasses

    from celery_archive.archive import manifest as mf
    from celery_archive.archive.chain import check
    from celery_archive.config import RunConfig
    from celery_archive.errors import LeaseLostError
    from celery_archive.pipeline.lease import Lease
    from celery_archive.pipeline.shards import commit_shards, config_json
    from celery_archive.sinks import open_sink

    url = f"db+sqlite:///{tmp_path / 'r.db'}"
    app = celery_app(url)
    for i in range(30):
        app.backend.store_result(f"j{i}", i, "SUCCESS")
    age_rows(url, 40)
    done = cli("run", "--source", url, "--sink", str(tmp_path / "first"), "--older-than", "30d", "--no-delete", "--json")
    assert done.returncode == 0, done.stderr
    rid = json.loads(done.stdout)["run_id"]
    manifest = dataclasses.replace(mf.load_manifest(open_sink(str(tmp_path / "first")), rid), chain=None)
    sink = open_sink(str(tmp_path / "second"))
    cfg = RunConfig(source=url, sink=str(tmp_path / "second"), older_than=dt.timedelta(days=30))
    job = {"run_id": rid, "config": config_json(cfg), "manifest": manifest.to_json()}
    lease = Lease(sink, rid, 30.0)
    with lease.holding():
        with pytest.raises(LeaseLostError):
            commit_shards({**job, "token": "not-the-runs"})
        assert mf.load_outcome(sink, rid) is None and not list(sink.list(mf.MANIFESTS))
        first = commit_shards({**job, "token": lease.token})
        again = commit_shards({**job, "token": lease.token})  # a redelivered commit task
    assert first == again and mf.load_outcome(sink, rid) is not None
    assert [o.key for o in sink.list(mf.MANIFESTS)] == [mf.manifest_key(rid)]
    links = check(sink, None)
    assert links.length == 1 and not links.problems and links.head == first["sha256"]


def test_a_shard_of_a_run_that_lost_its_lease_writes_and_deletes_nothing(tmp_path: Path) -> None:
    """A shard job whose token is not the lease's (the run was taken over, or its lease removed
    and taken by another run) stops before its first put, and its purge before its first delete."""
    from celery_archive.backends.shard import WHOLE
    from celery_archive.config import RunConfig
    from celery_archive.errors import LeaseLostError
    from celery_archive.pipeline.lease import Lease
    from celery_archive.pipeline.shards import ShardJob, config_json, purge_shard, write_shard
    from celery_archive.sinks import open_sink

    url = f"db+sqlite:///{tmp_path / 'r.db'}"
    app = celery_app(url)
    for i in range(20):
        app.backend.store_result(f"l{i}", i, "SUCCESS")
    age_rows(url, 40)
    sink_dir = tmp_path / "archive"
    sink = open_sink(str(sink_dir))
    cfg = RunConfig(source=url, sink=str(sink_dir), older_than=dt.timedelta(days=30))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    job = ShardJob("20261203T000000Z-aaaaaa", "the-old-token", WHOLE, config_json(cfg), now.isoformat(),
                   (now - dt.timedelta(days=30)).isoformat(), files=())
    with Lease(sink, "20261203T000000Z-bbbbbb", 30.0).holding():  # another run holds the archive's lease
        with pytest.raises(LeaseLostError):
            write_shard(job.to_json())
        with pytest.raises(LeaseLostError):
            purge_shard(job.to_json())
    assert not (sink_dir / "data").exists() or not list((sink_dir / "data").rglob("*"))
    assert len(table_rows(url)) == 20
