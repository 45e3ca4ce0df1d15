"""Crashes, interrupted runs, damaged archives and concurrent runs (invariants 1 and 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import age_rows, celery_app, cli, table_rows
from helpers import archive, data_files, read_archive

from celery_archive.errors import ConfigError, LockError, VerifyError
from celery_archive.pipeline import manifest as mf
from celery_archive.sinks.local import LocalSink

HARNESS = Path(__file__).with_name("crash_harness.py")


def fill(url: str, n: int = 60) -> set[str]:
    app = celery_app(url)
    for i in range(n):
        app.backend.store_result(f"r{i:03d}", {"i": i, "pad": "x" * 40}, "SUCCESS")
    app.backend.store_result("young", 1, "SUCCESS")
    for days in (35, 36, 37):  # spread over three day partitions
        age_rows(url, days, f"task_id <> 'young' AND task_id >= 'r{(days - 35) * 20:03d}'")
    return {f"r{i:03d}" for i in range(n)}


def committed_ids(sink: Path) -> set[str]:
    """Task ids in files listed by a manifest: what the archive holds for a warehouse."""
    ids: set[str] = set()
    s = LocalSink(sink)
    for run_id in mf.committed_runs(s):
        for entry in mf.load_manifest(s, run_id)["files"]:
            ids.update(read_archive_file(sink / entry["key"]))
    return ids


def read_archive_file(path: Path) -> list[str]:
    return [r[0] for r in duckdb.sql(f"select task_id from read_parquet('{path}')").fetchall()]


@pytest.mark.parametrize("stage", ["after-extract", "after-data", "after-manifest", "mid-purge"])
def test_sigkill_at_each_stage_then_rerun(backend_url: str, tmp_path: Path, stage: str) -> None:
    old = fill(backend_url)
    before = table_rows(backend_url)
    sink = tmp_path / "archive"

    proc = subprocess.run([sys.executable, str(HARNESS), stage, backend_url, str(sink)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr

    # after the crash: every result is still in the source or in a committed archive file
    in_source = set(table_rows(backend_url))
    in_archive = committed_ids(sink)
    assert old <= in_source | in_archive
    assert in_source >= old - in_archive, "something left the source without being archived"
    if stage in ("after-extract", "after-data"):
        assert in_source == set(before) and not in_archive
    if stage == "mid-purge":
        assert in_source != set(before), "the crash was meant to come after some deletes"

    report = archive(backend_url, sink)  # the re-run finishes or cleans up the dead run
    assert report.ok
    if stage in ("after-manifest", "mid-purge"):
        assert len(report.resumed) == 1
    assert set(table_rows(backend_url)) == {"young"}
    # a warehouse over the whole data/ tree sees each result once, with its exact bytes
    rows = duckdb.sql(f"select task_id, raw_result from read_parquet('{sink}/data/*/*.parquet', hive_partitioning=true)").fetchall()
    assert sorted(r[0] for r in rows) == sorted(old)
    assert all(bytes(raw) == before[tid]["result"] for tid, raw in rows)
    assert not (sink / mf.LOCK).exists()


def test_no_delete_then_a_normal_run_archives_each_result_once(sqlite_url: str, tmp_path: Path) -> None:
    old = fill(sqlite_url)
    sink = tmp_path / "archive"
    kept = archive(sqlite_url, sink, delete=False)
    assert kept.verified == len(old) and kept.deleted == 0
    assert set(table_rows(sqlite_url)) == old | {"young"}
    runs = json.loads(cli("runs", "--sink", str(sink), "--json").stdout)["runs"]
    assert [r["state"] for r in runs] == ["kept"]
    with pytest.raises(ConfigError, match="archive them twice"):
        archive(sqlite_url, sink, delete=False)
    final = archive(sqlite_url, sink)
    assert final.resumed == [kept.run_id] and final.selected == 0
    assert set(table_rows(sqlite_url)) == {"young"}
    assert set(read_archive(sink)) == old


def test_damaged_archive_fails_verify_and_blocks_the_purge(sqlite_url: str, tmp_path: Path) -> None:
    old = fill(sqlite_url)
    sink = tmp_path / "archive"
    archive(sqlite_url, sink, delete=False)
    victim = data_files(sink)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes(data))

    out = cli("verify", "--sink", str(sink), "--json")
    assert out.returncode == 3
    report = json.loads(out.stdout)
    assert report["ok"] is False and any(victim.name in p and "sha256" in p for p in report["problems"])

    with pytest.raises(VerifyError, match="nothing was deleted"):
        archive(sqlite_url, sink)
    assert set(table_rows(sqlite_url)) == old | {"young"}
    run_out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d", "--json")
    assert run_out.returncode == 3 and json.loads(run_out.stdout)["exit_code"] == 3
    victim.unlink()
    missing = cli("verify", "--sink", str(sink))
    assert missing.returncode == 3 and "cannot be read back" in missing.stdout


def test_a_live_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(sqlite_url: str, tmp_path: Path) -> None:
    fill(sqlite_url)
    sink = tmp_path / "archive"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s = LocalSink(sink)
        mf.write_json(s, mf.LOCK, {"run_id": "other", "host": os.uname().nodename, "pid": holder.pid, "since": "now"})
        with pytest.raises(LockError, match="holds the lock"):
            archive(sqlite_url, sink)
        out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d")
        assert out.returncode == 4 and "holds the lock" in out.stderr
    finally:
        holder.kill()
        holder.wait()
    report = archive(sqlite_url, sink)  # the holder is dead now: its lock is stale
    assert report.deleted == 60


def test_files_checked_while_a_run_goes_on_count_only_against_their_manifest_entries(sqlite_url: str, tmp_path: Path) -> None:
    """A run verifies each data file as soon as it is put (Verifier.submit), before its manifest
    exists; the manifest's entries decide: a file checked against anything else fails the run,
    and no verified copy is left behind. Index entries come out in manifest order."""
    from celery_archive.pipeline.verify import Verifier

    fill(sqlite_url)
    sink = LocalSink(tmp_path / "archive")
    archive(sqlite_url, tmp_path / "archive", delete=False)
    (run_id,) = mf.committed_runs(sink)
    manifest = mf.load_manifest(sink, run_id)
    files = manifest["files"]
    assert len(files) == 3  # one a day

    spool = tmp_path / "spool"
    spool.mkdir()
    located: list[str] = []
    good = Verifier(sink, run_id, spool, keep=True, on_located=lambda t: located.append(t["key"][0].as_py()))
    for entry in files[:2]:  # the last one is left for report() to check
        good.submit(entry)
    report = good.report(manifest)
    assert report.ok and report.rows == 60 and located == [e["key"] for e in files]
    assert sorted(p.name for p in spool.iterdir()) == sorted(v.path.name for v in report.verified) and len(report.verified) == 3
    for v in report.verified:
        v.path.unlink()

    bad = Verifier(sink, run_id, spool, keep=True)
    bad.submit({**files[1], "max_date_done": "1999-01-01T00:00:00Z"})  # the file is fine, its entry is not the manifest's
    report = bad.report(manifest)
    assert not report.ok and report.verified == [] and list(spool.iterdir()) == []
    assert report.problems == [f"{files[1]['key']}: the manifest's entry is not the one the file was written with"]
