"""A run stopped by SIGTERM/SIGINT (issue 14 item 11): at a safe point, releasing the lease,
what it took archived and purged; a second signal stops it at once. What dead runs leave behind
(staging directories, partial files, unfinished S3 uploads) is removed by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, faketime_env, table_rows
from helpers import later, wait_for
from test_lease_processes import SLOW, assert_each_once, data_keys, fill, start
from test_recovery import HARNESS, lease_state

from celery_archive.sinks import open_sink


def test_sigterm_stops_a_run_at_a_safe_point(sqlite_url: str, tmp_path: Path) -> None:
    old = fill(sqlite_url, "a", 1000)
    sink = str(tmp_path / "archive")
    first = start(sqlite_url, sink, *SLOW)
    wait_for(lambda: data_keys(open_sink(sink)), what="the first data file")
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    report = json.loads(out)
    assert report["stopped_early"] and report["stopped_by"] == "signal" and "stopping at the next batch boundary" in err
    assert 0 < report["archived"] == report["deleted"] < 1000
    assert lease_state(tmp_path / "archive") == "free"
    assert len(table_rows(sqlite_url)) == 1001 - report["deleted"]
    assert cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d").returncode == 0
    assert_each_once(open_sink(sink), old, sqlite_url, "ayoung")


def test_a_second_signal_stops_at_once_and_loses_nothing(sqlite_url: str, tmp_path: Path) -> None:
    old = fill(sqlite_url, "a", 1000)
    sink = str(tmp_path / "archive")
    first = start(sqlite_url, sink, *SLOW)
    wait_for(lambda: data_keys(open_sink(sink)), what="the first data file")
    first.send_signal(signal.SIGINT)  # the two arrive together: the second lands while the first is being handled
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert json.loads(out)["error_type"] == "Interrupted" and "Traceback" not in err
    assert lease_state(tmp_path / "archive") == "free"  # released on the way out: the next run need not wait
    again = cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d", "--json")
    assert again.returncode == 0
    assert_each_once(open_sink(sink), old, sqlite_url, "ayoung")


def test_what_killed_runs_leave_is_removed_by_the_next_run(sqlite_url: str, tmp_path: Path) -> None:
    fill(sqlite_url, "a", 60)
    sink = tmp_path / "archive"
    proc = subprocess.run([sys.executable, str(HARNESS), "after-data", sqlite_url, str(sink)], capture_output=True, timeout=120)
    assert proc.returncode == -9
    spool = sink / ".tmp-spool"
    dead = [p for p in spool.iterdir() if p.is_dir()]
    assert dead and any(f.is_file() for d in dead for f in d.iterdir()), "the killed run left its staging behind"
    partial = sink / "data" / ".tmp-0123abcd-x.parquet"  # a put killed half-way
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half a file")
    os.utime(partial, (time.time() - 3600, time.time() - 3600))
    out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["swept"] >= 2
    assert [p for p in spool.iterdir()] == [] and not partial.exists()


def _stage_again_and_again(root: str, times: int) -> int:
    """How many of ``times`` staging directories under ``root`` could not be made."""
    from celery_archive.errors import SinkError
    from celery_archive.spool import spool_dir

    failed = 0
    for _ in range(times):
        try:
            with spool_dir(Path(root)) as path:
                (Path(path) / "part").write_bytes(b"x")
        except SinkError:
            failed += 1
    return failed


def test_staging_directories_made_and_removed_side_by_side_never_fail(tmp_path: Path) -> None:
    """Two purge tasks of a run in shards on one worker (and any two commands on one archive)
    stage under the same .tmp-spool: one's sweep met the other's directory as it was being
    removed and failed with 'creating a staging directory ... No such file or directory' (about
    5 of 100 starts with three processes at it); the background run then never finished."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(3) as pool:
        failed = list(pool.map(_stage_again_and_again, [str(tmp_path / "spool")] * 3, [600] * 3))
    assert failed == [0, 0, 0]
    assert list((tmp_path / "spool").iterdir()) == []


def test_unfinished_multipart_uploads_are_aborted(sqlite_url: str, s3_bucket: str) -> None:
    import boto3

    fill(sqlite_url, "a", 10)
    s3 = boto3.client("s3")
    s3.create_multipart_upload(Bucket=s3_bucket, Key="arch/data/date=2026-01-01/x-00001.parquet")
    s3.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/not-ours.bin")
    # the run's clock 5 s ahead (libfaketime): the uploads are older than twice the lease TTL, without waiting
    out = cli("run", "--source", sqlite_url, "--sink", f"s3://{s3_bucket}/arch", "--older-than", "30d", "--lease-ttl", "1s", "--json",
              env=faketime_env(later(5)))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["swept"] == 1
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == ["elsewhere/not-ours.bin"]


@pytest.mark.parametrize("bad", ["0s", "0.5s", "soon"])
def test_a_bad_lease_ttl_is_refused(sqlite_url: str, tmp_path: Path, bad: str) -> None:
    out = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--lease-ttl", bad)
    assert out.returncode == 2 and "--lease-ttl" in out.stderr, out.stderr
