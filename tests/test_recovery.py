"""Crashes, interrupted runs, damaged archives and concurrent runs (invariants 1 and 3)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import age_rows, celery_app, cli, pooled, table_rows
from helpers import archive, data_files, read_archive

from celery_archive.archive import manifest as mf
from celery_archive.errors import ConfigError, LockError, VerifyError
from celery_archive.sinks.local import LocalSink

HARNESS = Path(__file__).with_name("crash_harness.py")
LEASE_HOLDER = Path(__file__).with_name("lease_holder.py")


def lease_state(sink: Path) -> str | None:
    """The state of the archive's lease as its latest version says (held / free)."""
    from celery_archive.pipeline.lease import Lease

    latest = Lease(LocalSink(sink), "probe").latest()
    return None if latest is None else str(latest.body.get("state"))


def fill(url: str, n: int = 60) -> set[str]:
    with pooled(celery_app(url)) as backend:
        for i in range(n):
            backend.store_result(f"r{i:03d}", {"i": i, "pad": "x" * 40}, "SUCCESS")
        backend.store_result("young", 1, "SUCCESS")
    for days in (35, 36, 37):  # spread over three day partitions
        age_rows(url, days, f"task_id <> 'young' AND task_id >= 'r{(days - 35) * 20:03d}'")
    return {f"r{i:03d}" for i in range(n)}


def committed_ids(sink: Path) -> set[str]:
    """Task ids in files listed by a manifest: what the archive holds for a warehouse."""
    ids: set[str] = set()
    s = LocalSink(sink)
    for run_id in mf.committed_runs(s):
        for entry in mf.load_manifest(s, run_id).files:
            ids.update(read_archive_file(sink / entry.key))
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
    assert lease_state(sink) == "free"


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


def test_a_live_lease_refuses_a_second_run_and_a_dead_ones_is_taken_over(sqlite_url: str, tmp_path: Path) -> None:
    """A lease held by a live process (renewing it) refuses a run once the run has seen a
    renewal; killed, its lease goes stale after its ttl and the next run takes over."""
    fill(sqlite_url)
    sink = tmp_path / "archive"
    holder = subprocess.Popen([sys.executable, str(LEASE_HOLDER), str(sink), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("held")
        with pytest.raises(LockError, match="renewed it while this run waited"):
            archive(sqlite_url, sink)
        out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d")
        assert out.returncode == 4 and "renewed it while this run waited" in out.stderr, out.stderr
        assert "watching it for up to 2 s" in out.stderr
    finally:
        holder.kill()
        holder.wait()
    assert set(table_rows(sqlite_url)) >= {f"r{i:03d}" for i in range(60)}  # the refused runs changed nothing
    report = archive(sqlite_url, sink)  # the holder is dead: no renewal for 2 s, and the lease is taken over
    assert report.deleted == 60
    assert lease_state(sink) == "free"


def test_a_lock_of_the_previous_version_is_never_taken_over(sqlite_url: str, tmp_path: Path) -> None:
    fill(sqlite_url)
    sink = tmp_path / "archive"
    (sink / "locks").mkdir(parents=True)
    (sink / "locks" / "run.lock").write_text('{"run_id": "old", "host": "elsewhere", "pid": 1}')
    out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d", "--json")
    assert out.returncode == 4
    assert "celery-archive 0.1" in json.loads(out.stdout)["error"]
    assert len(table_rows(sqlite_url)) == 61


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
    files = manifest.files
    assert len(files) == 3  # one a day

    spool = tmp_path / "spool"
    spool.mkdir()
    located: list[str] = []
    good = Verifier(sink, run_id, spool, keep=True, on_located=lambda t: located.append(t["key"][0].as_py()))
    for entry in files[:2]:  # the last one is left for report() to check
        good.submit(entry)
    report = good.report(manifest)
    assert report.ok and report.rows == 60 and located == [e.key for e in files]
    assert sorted(p.name for p in spool.iterdir()) == sorted(v.path.name for v in report.verified) and len(report.verified) == 3
    for v in report.verified:
        v.path.unlink()

    bad = Verifier(sink, run_id, spool, keep=True)
    bad.submit(dataclasses.replace(files[1], max_date_done="1999-01-01T00:00:00Z"))  # the file is fine, its entry is not the manifest's
    report = bad.report(manifest)
    assert not report.ok and report.verified == [] and list(spool.iterdir()) == []
    assert report.problems == [f"{files[1].key}: the manifest's entry is not the one the file was written with"]


def test_a_lost_manifest_is_written_again_from_its_commit_record(sqlite_url: str, tmp_path: Path) -> None:
    old = fill(sqlite_url)
    sink = tmp_path / "archive"
    first = archive(sqlite_url, sink)
    assert first.deleted == 60
    files = data_files(sink)
    (sink / mf.manifest_key(first.run_id)).unlink()  # a committed, purged run's manifest: gone
    out = cli("verify", "--sink", str(sink), "--json")
    assert out.returncode == 3
    assert any(first.run_id in p and "manifest is missing" in p for p in json.loads(out.stdout)["problems"])
    second = archive(sqlite_url, sink)
    assert second.manifests_restored == [first.run_id] and second.orphans_removed == 0
    assert data_files(sink) == files
    assert cli("verify", "--sink", str(sink)).returncode == 0
    assert set(read_archive(sink)) == old


def test_a_run_whose_manifest_and_commit_record_are_lost_keeps_its_files_and_is_rebuilt(sqlite_url: str, tmp_path: Path) -> None:
    """The field test's second loss: a purged run's manifest missing (a partial copy, a bucket
    policy), and the next run deleted its data files as orphans. Now they are kept and reported,
    verify fails naming the run, and `manifest rebuild` makes it again from the files."""
    old = fill(sqlite_url)
    sink = tmp_path / "archive"
    first = archive(sqlite_url, sink)
    files = data_files(sink)
    (sink / mf.manifest_key(first.run_id)).unlink()
    (sink / mf.outcome_key(first.run_id)).unlink()
    verify = cli("verify", "--sink", str(sink), "--json")
    assert verify.returncode == 3
    assert any(first.run_id in p and "manifest is lost" in p and "manifest rebuild" in p for p in json.loads(verify.stdout)["problems"])
    out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d")
    assert out.returncode == 0 and "manifest rebuild" in out.stderr
    assert data_files(sink) == files  # nothing of it was removed
    rebuilt = cli("manifest", "rebuild", "--sink", str(sink), "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["rebuilt"] == [{"run_id": first.run_id, "source": "data files", "files": 3, "rows": 60}]
    assert cli("verify", "--sink", str(sink)).returncode == 0
    manifest = mf.load_manifest(LocalSink(sink), first.run_id)
    assert manifest.rebuilt and manifest.extra["rebuilt"]["from"] == "data files and run report" and manifest.totals.rows == 60
    assert set(read_archive(sink)) == old
    shown = cli("restore", "r007", "--sink", str(sink), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == {"i": 7, "pad": "x" * 40}
    again = cli("manifest", "rebuild", "--sink", str(sink), "--json")
    assert json.loads(again.stdout)["rebuilt"] == []


def test_a_run_the_hash_chain_names_keeps_its_files_whatever_else_of_it_is_lost(sqlite_url: str, tmp_path: Path) -> None:
    """Field test: a purged run's manifest, commit record, run report and index entries all
    removed by hand; only its chain position said it committed, and the next run deleted its
    data files as a dead run's (60 results lost). The chain counts: they are kept and rebuilt."""
    old = fill(sqlite_url)
    sink = tmp_path / "archive"
    first = archive(sqlite_url, sink)
    files = data_files(sink)
    gone = [sink / mf.manifest_key(first.run_id), sink / mf.outcome_key(first.run_id),
            *(p for p in sink.rglob("*") if (p.is_file() and first.run_id in p.name and "index" in p.parts) or
              (p.is_file() and p.parent.name == "runs" and p.name.startswith(first.run_id)))]
    assert len(gone) == 4, gone  # the manifest, the outcome, the run report, the restore index log
    for p in gone:
        p.unlink()
    out = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["orphans_removed"] == 0 and data_files(sink) == files
    rebuilt = cli("manifest", "rebuild", "--sink", str(sink), "--run", first.run_id, "--json")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert json.loads(rebuilt.stdout)["rebuilt"][0]["rows"] == 60, rebuilt.stdout
    assert set(read_archive(sink)) == old


def test_a_v1_archive_with_a_lost_manifest_is_rebuilt(tmp_path: Path) -> None:
    import shutil

    from conftest import ROOT

    sink = tmp_path / "archive-v1"
    shutil.copytree(ROOT / "tests" / "fixtures" / "archive-v1", sink)
    (sink / "manifests" / "20261125T175139Z-bb2b9e.json").unlink()
    assert cli("verify", "--sink", str(sink)).returncode == 3
    out = cli("manifest", "rebuild", "--sink", str(sink), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["rebuilt"][0]["rows"] == 26
    assert cli("verify", "--sink", str(sink)).returncode == 0


def test_verify_of_a_place_that_holds_no_archive_fails(tmp_path: Path) -> None:
    for where in (tmp_path / "nothing-here", tmp_path):
        out = cli("verify", "--sink", str(where), "--json")
        assert out.returncode == 2 and "no archive at" in json.loads(out.stdout)["error"]
