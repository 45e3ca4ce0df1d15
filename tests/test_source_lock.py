"""One archiver per backend (issue 14 item 12): while a run archives a backend, a second
archiver of the same results into another archive is refused (exit 4) and changes nothing;
once the first has finished, the lock is free again. On SQLite, PostgreSQL, MariaDB and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import age_rows, celery_app, cli, db_url, pooled, table_rows
from helpers import REDIS_URL, keys, redis_app, wait_for
from test_lease_processes import EXE, SLOW, data_keys, start

from celery_archive.sinks import open_sink


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_a_second_archiver_of_the_same_tables_is_refused(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = db_url(request, kind, tmp_path)
    with pooled(celery_app(url)) as backend:
        for i in range(800):
            backend.store_result(f"t{i:04d}", i, "SUCCESS")
    age_rows(url, 40)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first = start(url, a, *SLOW)
    wait_for(lambda: data_keys(open_sink(a)), what="the first run's first file")
    second = cli("run", "--source", url, "--sink", b, "--older-than", "30d", "--json")
    assert second.returncode == 4, second.stdout + second.stderr
    assert "another celery-archive run is archiving" in json.loads(second.stdout)["error"]
    assert not (tmp_path / "b" / "data").exists()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads(out)["deleted"] == 800 and table_rows(url) == {}
    third = cli("run", "--source", url, "--sink", b, "--older-than", "30d", "--json")  # the lock is free again
    assert third.returncode == 0 and json.loads(third.stdout)["selected"] == 0


def test_a_second_archiver_of_the_same_redis_keys_is_refused(prefix: str, tmp_path: Path) -> None:
    app = redis_app(prefix)
    for i in range(800):
        app.backend.store_result(f"t{i:04d}", i, "SUCCESS")
    args = ("--source", REDIS_URL, "--key-prefix", prefix, "--older-than", "0s")  # all written before the runs start
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first = __import__("subprocess").Popen([EXE, "run", *args, "--sink", a, "--json", *SLOW], stdout=-1, stderr=-1, text=True)
    wait_for(lambda: data_keys(open_sink(a)), what="the first run's first file")
    second = cli("run", *args, "--sink", b, "--json")
    assert second.returncode == 4 and "another celery-archive run is archiving this Redis backend" in json.loads(second.stdout)["error"]
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads(out)["deleted"] == 800 and keys(prefix) == {}
    assert cli("run", *args, "--sink", b, "--json").returncode == 0


def test_a_redis_run_paused_past_its_lock_commits_nothing_more(prefix: str, tmp_path: Path) -> None:
    """A Redis archiver lock is a key with a TTL (--lease-ttl): a run paused past it (SIGSTOP, a
    frozen VM) may find that another run archived the same keys into another archive meanwhile.
    Its next commit or purge checks the lock first: it stops (exit 4) and commits nothing, so
    no result is in both archives; what the other run archived is all there."""
    import os
    import signal
    import subprocess
    import time

    from test_lease_processes import committed_ids

    app = redis_app(prefix)
    for i in range(800):
        app.backend.store_result(f"t{i:04d}", i, "SUCCESS")
    args = ("--source", REDIS_URL, "--key-prefix", prefix, "--older-than", "0s", "--json")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first = subprocess.Popen([EXE, "run", *args, "--sink", a, "--lease-ttl", "3s", *SLOW], stdout=-1, stderr=-1, text=True)
    wait_for(lambda: data_keys(open_sink(a)), what="the first run's first file")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        time.sleep(4)  # past the lock's 3 s
        second = cli("run", *args, "--sink", b)
        assert second.returncode == 0, second.stdout + second.stderr
        assert json.loads(second.stdout)["deleted"] == 800 and keys(prefix) == {}
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 4, out + err
    assert "lost the archiver lock" in json.loads(out)["error"]
    assert committed_ids(open_sink(a)) == [] and sorted(committed_ids(open_sink(b))) == [f"t{i:04d}" for i in range(800)]
