"""The lease between real processes (issue 14's field reproducers): a second run from another
PID namespace beside a live run, the lease removed by hand while a run goes on, a run paused
(SIGSTOP) long enough to be taken over that then comes back, on a local archive and on S3.
Every case ends with the same count: no result lost, none archived twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import age_rows, celery_app, pooled, table_rows
from helpers import wait_for

from celery_archive.archive import manifest as mf
from celery_archive.sinks import Sink, open_sink

EXE = str(Path(sys.executable).parent / "celery-archive")
SLOW = ("--batch-size", "50", "--max-rate", "250", "--max-file-size", "16KiB")


def fill(url: str, prefix: str, n: int) -> set[str]:
    with pooled(celery_app(url)) as backend:
        for i in range(n):
            backend.store_result(f"{prefix}{i:05d}", {"i": i}, "SUCCESS")
        age_rows(url, 40)
        backend.store_result(f"{prefix}young", 1, "SUCCESS")
    return {f"{prefix}{i:05d}" for i in range(n)}


def start(source: str, sink: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([EXE, "run", "--source", source, "--sink", sink, "--older-than", "30d", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def committed_ids(sink: Sink) -> list[str]:
    """Task ids in the files the archive's manifests name, with repeats: what a query sees."""
    out: list[str] = []
    with duckdb.connect() as con:
        for entry in mf.committed_files(sink):
            with sink.open(entry.key) as f:
                data = f.read()
            path = Path(f"/tmp/ca-count-{os.getpid()}.parquet")
            path.write_bytes(data)
            out += [r[0] for r in con.sql(f"select task_id from read_parquet('{path}')").fetchall()]
            path.unlink()
    return out


def data_keys(sink: Sink) -> list[str]:
    return [o.key for o in sink.list(mf.DATA)]


def assert_each_once(sink: Sink, wanted: set[str], url: str, young: str) -> None:
    ids = committed_ids(sink)
    archived = [i for i in ids if i in wanted]
    assert sorted(archived) == sorted(wanted), f"lost {len(wanted - set(archived))}, duplicated {len(archived) - len(set(archived))}"
    assert set(table_rows(url)) == {young}


@pytest.fixture
def sources(tmp_path: Path) -> tuple[str, str]:
    return f"db+sqlite:///{tmp_path / 'one.db'}", f"db+sqlite:///{tmp_path / 'two.db'}"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_run_in_another_pid_namespace_is_refused_while_one_runs(sources: tuple[str, str], tmp_path: Path) -> None:
    one, two = sources
    first_ids, second_ids = fill(one, "a", 1000), fill(two, "b", 100)
    sink = str(tmp_path / "archive")
    first = start(one, sink, *SLOW, "--lease-ttl", "3s")
    archive = open_sink(sink)
    wait_for(lambda: data_keys(archive), what="the first run's first data file")
    # the field test's reproducer: same hostname, another PID namespace, where the first run's pid is not visible
    second = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", EXE, "run", "--source", two, "--sink", sink,
                             "--older-than", "30d", "--json"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 4, second.stdout + second.stderr
    assert "renewed it while this run waited" in json.loads(second.stdout)["error"]
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads(out)["deleted"] == 1000
    assert_each_once(archive, first_ids, one, "ayoung")
    assert set(table_rows(two)) == second_ids | {"byoung"}  # the refused run changed nothing


def test_the_lease_removed_by_hand_while_a_run_goes_on_loses_nothing(sources: tuple[str, str], tmp_path: Path) -> None:
    one, two = sources
    first_ids, second_ids = fill(one, "a", 1000), fill(two, "b", 100)
    sink = str(tmp_path / "archive")
    archive = open_sink(sink)
    first = start(one, sink, *SLOW, "--lease-ttl", "3s")
    wait_for(lambda: data_keys(archive), what="the first run's first data file")
    for p in (tmp_path / "archive" / "locks").iterdir():  # what the old lock message invited
        p.unlink()
    second = start(two, sink)  # finds no lease: takes it, and settles the first run's files
    _, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=120)
    assert second.returncode == 0, err2
    assert first.returncode in (0, 4), err1  # 4: it noticed it lost the lease, and stopped before committing
    if first.returncode == 4:
        assert "lost the lease" in json.loads(out1)["error"] or "abandoned" in json.loads(out1)["error"]
    final = start(one, sink)  # finishes or redoes whatever the first run could not
    assert final.wait(120) == 0
    assert_each_once(archive, first_ids, one, "ayoung")
    assert_each_once(archive, second_ids, two, "byoung")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_paused_run_taken_over_commits_nothing_when_it_comes_back(sources: tuple[str, str], tmp_path: Path,
                                                                    where: str, request: pytest.FixtureRequest) -> None:
    one, two = sources
    first_ids, second_ids = fill(one, "a", 1000), fill(two, "b", 100)
    if where == "s3":
        sink = f"s3://{request.getfixturevalue('s3_bucket')}/arch"
    else:
        sink = str(tmp_path / "archive")
    archive = open_sink(sink)
    first = start(one, sink, *SLOW, "--lease-ttl", "2s")
    wait_for(lambda: len(data_keys(archive)) >= 2, what="the first run's data files")
    os.kill(first.pid, signal.SIGSTOP)  # a frozen VM, a stopped container: alive, but not renewing
    try:
        second = start(two, sink)
        out2, err2 = second.communicate(timeout=120)
        assert second.returncode == 0, err2
        report = json.loads(out2)
        assert report["orphans_removed"] >= 2  # the paused run's files, abandoned first
        assert "watching it for up to 2 s" in err2
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out1, _ = first.communicate(timeout=120)
    assert first.returncode == 4, out1
    assert set(table_rows(one)) == first_ids | {"ayoung"}  # it deleted nothing from its backend
    assert "lost the lease" in json.loads(out1)["error"] or "abandoned" in json.loads(out1)["error"]
    assert _abandoned(archive), "the paused run was abandoned before its files were removed"
    final = start(one, sink)
    assert final.wait(120) == 0
    assert_each_once(archive, first_ids, one, "ayoung")
    assert_each_once(archive, second_ids, two, "byoung")


def _abandoned(archive: Sink) -> list[str]:
    names = [o.key[len(mf.OUTCOMES):-len(".json")] for o in archive.list(mf.OUTCOMES)]
    return [n for n in names if getattr(mf.load_outcome(archive, n), "state", None) is mf.ABANDONED]
