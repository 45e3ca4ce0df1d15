"""forget: named results taken out of the archive for good, on a local directory and on S3
(moto's server), with the archive consistent afterwards; refused where Object Lock holds a file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli, new_bucket, s3_client
from forget_support import archived_ids, holders, local_bytes, make_archive, marker, query_count, restored, s3_bytes

from celery_archive.archive import manifest as mf
from celery_archive.sinks import open_sink

GONE = ["r-005", "r-033"]  # r-005 is in both runs


def _forget(sink: str, *args: str) -> dict[str, object]:
    proc = cli("forget", *args, "--sink", sink, "--reason", "erasure request 2026-118", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def _after(sink: str, ids: list[str]) -> None:
    """What forget promises, checked through the commands a user has."""
    for tid in GONE:
        proc = cli("restore", tid, "--sink", sink)
        assert proc.returncode == 5 and "not in the archive" in proc.stderr, proc.stderr
        assert query_count(sink, tid) == 0
    kept = [t for t in ids if t not in GONE]
    assert Counter(restored(sink, kept)) == Counter(kept)  # each neighbour once
    assert Counter(archived_ids(sink)) == Counter(kept)  # what a query sees: no duplicate, nothing lost
    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_forget_local(sqlite_url: str, tmp_path: Path, fmt: str) -> None:
    sink = tmp_path / "archive"
    ids = make_archive(sqlite_url, str(sink), fmt)
    if fmt == "jsonl":  # uncompressed text: the id and its payload are plainly there before
        assert holders(local_bytes(sink), marker("r-033")) and holders(local_bytes(sink), "r-033")
    runs = mf.committed_runs(open_sink(str(sink)))
    out = _forget(str(sink), *GONE, "never-archived")
    assert out["forgotten"] == GONE and out["missing"] == ["never-archived"]
    assert out["results"] == 3 and out["runs"] == runs  # r-005 twice
    _after(str(sink), ids)
    for tid in GONE:  # no byte of them anywhere: data, index, manifests, plans, spool
        assert holders(local_bytes(sink), tid) == []
        assert holders(local_bytes(sink), marker(tid)) == []
    assert not list((sink / "rewrites").glob("*")) if (sink / "rewrites").exists() else True
    # each touched run has a revision that names the one it supersedes
    s = open_sink(str(sink))
    for rid in runs:
        (r1, k1), (r2, k2) = mf.manifest_revisions(s, rid)
        revised = json.loads(s.read(k2))
        import hashlib

        assert (r1, r2) == (1, 2) and revised["supersedes"] == hashlib.sha256(s.read(k1)).hexdigest()
        assert revised["chain"]["seq"] > json.loads(s.read(k1))["chain"]["seq"]  # linked at the head of the hash chain
    proc = cli("forget", "r-033", "--sink", str(sink), "--reason", "again")
    assert proc.returncode == 5 and "not in the archive at" in proc.stderr and "r-033" in proc.stderr
    from celery_archive.archive import audit

    (event,) = [e for e in audit.events(s) if e["event"] == "forget"]  # the one that found nothing wrote none
    assert (event["reason"], event["results"], event["runs"]) == ("erasure request 2026-118", 3, runs)
    assert "@" in event["who"] and event["rewrite_id"] == out["rewrite_id"]
    assert sorted(event["manifests"]) == [mf.manifest_key(r, 2) for r in runs]


def test_forget_ids_from_and_dry_run(sqlite_url: str, tmp_path: Path) -> None:
    sink = tmp_path / "archive"
    ids = make_archive(sqlite_url, str(sink), again=())
    listing = tmp_path / "ids.txt"
    listing.write_text("# erasure request 2026-118\nr-005\n\nr-033\nunknown-1\n")
    before = local_bytes(sink)
    proc = cli("forget", "--ids-from", str(listing), "--sink", str(sink), "--reason", "x", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["dry_run"], out["forgotten"], out["missing"], out["results"]) == (True, GONE, ["unknown-1"], 2)
    assert local_bytes(sink) == before  # nothing changed
    proc = cli("forget", "unknown-1", "unknown-2", "--sink", str(sink), "--reason", "x", "--json")
    assert proc.returncode == 5
    out = json.loads(proc.stdout)
    assert (out["ok"], out["error_type"], out["exit_code"]) == (False, "NotArchivedError", 5)
    assert "unknown-1, unknown-2" in out["error"] and "nothing was changed" in out["error"]
    proc = cli("forget", "r-005", "--sink", str(sink), "--reason", " ")
    assert proc.returncode == 2 and "--reason" in proc.stderr
    out = _forget(str(sink), "--ids-from", str(listing))
    assert out["forgotten"] == GONE
    _after(str(sink), ids)


def test_forget_s3(sqlite_url: str, s3_bucket: str, s3_endpoint: str) -> None:
    sink = f"s3://{s3_bucket}/celery/prod"
    ids = make_archive(sqlite_url, sink, "jsonl")
    s3 = s3_client(s3_endpoint)
    assert holders(s3_bytes(s3, s3_bucket), marker("r-033"))
    out = _forget(sink, *GONE)
    assert out["forgotten"] == GONE and out["results"] == 3
    _after(sink, ids)
    blobs = s3_bytes(s3, s3_bucket)
    for tid in GONE:
        assert holders(blobs, tid) == [] and holders(blobs, marker(tid)) == []


def test_forget_s3_versioned_bucket_erases_old_versions(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    sink = f"s3://{bucket}/a"
    ids = make_archive(sqlite_url, sink, "jsonl", again=())
    _forget(sink, "r-033")
    blobs = s3_bytes(s3, bucket)  # a plain delete would have kept the old file as a version
    assert holders(blobs, "r-033") == [] and holders(blobs, marker("r-033")) == []
    assert Counter(archived_ids(sink)) == Counter(t for t in ids if t != "r-033")


def test_forget_refuses_object_lock(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3, lock=True)
    sink = f"s3://{bucket}/locked?object_lock=GOVERNANCE&retain=30d"
    ids = make_archive(sqlite_url, sink, again=())

    def objects() -> list[str]:
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []) if "/locks/" not in o["Key"])

    before = objects()
    proc = cli("forget", "r-033", "--sink", sink, "--reason", "erasure", "--json")
    assert proc.returncode == 1, proc.stdout
    out = json.loads(proc.stdout)
    assert out["error_type"] == "RetainedError"
    assert "Object Lock" in out["error"] and "Nothing was changed" in out["error"]
    assert objects() == before
    assert Counter(restored(sink, ["r-033"])) == Counter(["r-033"])
    assert Counter(archived_ids(sink)) == Counter(ids)


def test_forget_refuses_legal_hold(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3, lock=True)
    sink = f"s3://{bucket}/held?legal_hold=on"
    make_archive(sqlite_url, sink, again=())
    proc = cli("forget", "r-033", "--sink", sink, "--reason", "erasure")
    assert proc.returncode == 1 and "legal hold" in proc.stderr and "Nothing was changed" in proc.stderr


def _consistent(sink: str, ids: list[str], gone: list[str]) -> None:
    """After a crash: verify passes, every result not being forgotten is seen exactly once by a
    query and restores; the ones being forgotten are seen at most once."""
    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout
    seen = Counter(archived_ids(sink))
    kept = [t for t in ids if t not in gone]
    assert {t: seen[t] for t in kept} == dict.fromkeys(kept, 1)
    assert all(seen[t] <= 1 for t in gone)
    assert Counter(restored(sink, kept)) == Counter(kept)


@pytest.mark.parametrize("finisher", ["forget", "run"])
@pytest.mark.parametrize("stage", ["after-plan", "after-file", "after-register", "after-revision", "after-index", "mid-erase"])
def test_forget_killed_at_each_step_is_finished_by_the_next(sqlite_url: str, tmp_path: Path, stage: str, finisher: str) -> None:
    import subprocess
    import sys

    sink = tmp_path / "archive"
    ids = make_archive(sqlite_url, str(sink), "jsonl", again=())
    gone = ["r-005", "r-033", "r-034"]
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "forget_crash.py"), stage, "forget", *gone, "--sink",
                           str(sink), "--reason", "crash test"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed where it was told
    assert list((sink / "rewrites").iterdir())  # the plan was recorded first and is still there
    _consistent(str(sink), ids, gone)
    if finisher == "forget":  # the same request again: the plan is finished, the ids are reported as forgotten
        out = _forget(str(sink), *gone)
        assert out["forgotten"] == gone and out["missing"] == [] and len(out["finished_earlier"]) == 1
    else:  # the next nightly run finishes it before anything else
        proc = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d", "--lease-ttl", "1s", "--json")
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["rewrites_finished"]) == 1
    assert not list((sink / "rewrites").iterdir())
    from celery_archive.archive import audit

    (event,) = [e for e in audit.events(open_sink(str(sink))) if e["event"] == "forget"]  # once, naming each revision
    assert (event["results"], event["reason"], len(event["manifests"])) == (3, "crash test", 1), event
    for tid in gone:
        assert holders(local_bytes(sink), tid) == [] and holders(local_bytes(sink), marker(tid)) == []
    _consistent(str(sink), ids, gone)
    assert all(query_count(str(sink), t) == 0 for t in gone)
    report = json.loads(cli("verify", "--sink", str(sink), "--json").stdout)
    assert not [n for n in report["notes"] if "not in place" in n or "not registered" in n], report  # none left half-done


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_forget_kill_9_at_random_points_loses_and_duplicates_nothing(sqlite_url: str, tmp_path: Path, fmt: str) -> None:
    from forget_kill_loop import loop

    sink = str(tmp_path / "archive")
    ids = make_archive(sqlite_url, sink, fmt, n=120, again=())
    out = loop(sink, ids, rounds=8)
    print(out)
    assert out.killed >= 3, out  # the kills landed inside forget runs
    assert (out.lost, out.duplicated, out.unrestorable, out.verify_failed, out.left, out.bytes_left) == (0, 0, 0, 0, 0, 0), out


def test_forget_on_localstack_refuses_compliance_lock_then_erases_every_version(sqlite_url: str, on_localstack: str,
                                                                                tmp_path: Path) -> None:
    s3 = s3_client(on_localstack, key="test", secret="test-secret")
    locked = new_bucket(s3, lock=True)
    sink = f"s3://{locked}/c?object_lock=COMPLIANCE&retain=1d"
    ids = make_archive(sqlite_url, sink, "jsonl", again=())
    before = s3_bytes(s3, locked)
    proc = cli("forget", "r-033", "--sink", sink, "--reason", "erasure")
    assert proc.returncode == 1 and "COMPLIANCE" in proc.stderr and "Nothing was changed" in proc.stderr, proc.stderr
    assert [n for n, _ in s3_bytes(s3, locked) if "/locks/" not in n] == [n for n, _ in before if "/locks/" not in n]

    versioned = new_bucket(s3, lock=True)  # versioned (Object Lock on), but nothing retained
    sink = f"s3://{versioned}/v"
    make_archive(f"db+sqlite:///{tmp_path / 'second.db'}", sink, "jsonl", again=())
    _forget(sink, "r-033")
    blobs = s3_bytes(s3, versioned)
    assert holders(blobs, "r-033") == [] and holders(blobs, marker("r-033")) == []
    assert Counter(archived_ids(sink)) == Counter(t for t in ids if t != "r-033")


def test_forget_drops_index_entries_that_name_no_committed_file(sqlite_url: str, tmp_path: Path) -> None:
    """An id the index still names, in a file no manifest lists (a stale index): not in the
    archive (exit 5), and its entry leaves the index all the same."""
    import pyarrow.parquet as pq

    from celery_archive.formats.entries import entries
    from celery_archive.index.packs import lookup

    sink = tmp_path / "archive"
    make_archive(sqlite_url, str(sink), again=())
    ghost = entries({"task_id": ["ghost-1"], "kind": ["task"], "key": ["data/date=2026-01-01/gone-00001.parquet"], "block": [0],
                     "offset": [4], "length": [10], "row": [0], "footer_offset": [20], "footer_length": [8]})
    pq.write_table(ghost, sink / "index" / "log" / "run-20260101T000000Z-000001.parquet")
    assert lookup(open_sink(str(sink)), ["ghost-1"])
    proc = cli("forget", "ghost-1", "--sink", str(sink), "--reason", "erasure")
    assert proc.returncode == 5 and "ghost-1" in proc.stderr
    assert lookup(open_sink(str(sink)), ["ghost-1"]) == {}
    assert holders(local_bytes(sink), "ghost-1") == []
    assert cli("verify", "--sink", str(sink)).returncode == 0
