"""prune: results older than an age leave the archive (whole files, or files rewritten without
them), the config's [hold] keeps what it names, Object Lock skips a file and counts it."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import celery_app, cli, new_bucket, s3_client
from forget_support import archived_ids, holders, local_bytes, marker, restored
from helpers import archive

from celery_archive.archive import audit
from celery_archive.sinks import open_sink

DAY = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).date()
NEWER = [f"r-{i:03d}" for i in range(20)]  # DAY 12:00
OLDER = [f"r-{i:03d}" for i in range(20, 40)]  # DAY 10:00: the same day's files, partly older
OLDEST = [f"r-{i:03d}" for i in range(40, 50)]  # five days before: whole files older
CUTOFF = dt.datetime.combine(DAY, dt.time(11), dt.timezone.utc)


def _stamp(url: str, ids: list[str], at: dt.datetime) -> None:
    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE celery_taskmeta SET date_done = :d WHERE task_id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)), {"d": at.strftime("%Y-%m-%d %H:%M:%S.%f"), "ids": ids})
    engine.dispose()


def _archive(url: str, sink: str) -> None:
    app = celery_app(url)
    for tid in [*NEWER, *OLDER, *OLDEST]:
        app.backend.store_result(tid, {"secret": marker(tid)}, "SUCCESS")
    _stamp(url, NEWER, CUTOFF + dt.timedelta(hours=1))
    _stamp(url, OLDER, CUTOFF - dt.timedelta(hours=1))
    _stamp(url, OLDEST, CUTOFF - dt.timedelta(days=5))
    archive(url, sink, max_file_bytes=100_000, batch_size=50, format="jsonl", compression="none")  # type: ignore[arg-type]


def _age() -> str:
    return f"{int((dt.datetime.now(dt.timezone.utc) - CUTOFF).total_seconds())}s"


def _prune(sink: str, *args: str) -> dict[str, object]:
    proc = cli("prune", "--sink", sink, "--older-than", _age(), *args, "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def test_prune_local_with_hold(sqlite_url: str, tmp_path: Path) -> None:
    sink = str(tmp_path / "archive")
    _archive(sqlite_url, sink)
    config = tmp_path / "archive.toml"
    config.write_text('[hold]\ntask_ids = ["r-021"]\n')
    before = local_bytes(Path(sink))
    out = _prune(sink, "--config", str(config), "--dry-run")
    assert (out["results"], out["held"], out["files_removed"], out["files_rewritten"]) == (29, 1, 1, 1), out
    assert local_bytes(Path(sink)) == before
    out = _prune(sink, "--config", str(config))
    assert (out["results"], out["held"], out["files_removed"], out["files_rewritten"], out["locked_files"]) == (29, 1, 1, 1, 0)
    kept = [*NEWER, "r-021"]
    assert Counter(archived_ids(sink)) == Counter(kept)
    assert Counter(restored(sink, kept)) == Counter(kept)
    for tid in ["r-020", "r-045"]:
        proc = cli("restore", tid, "--sink", sink)
        assert proc.returncode == 5, proc.stderr
        assert holders(local_bytes(Path(sink)), marker(tid)) == [] and holders(local_bytes(Path(sink)), tid) == []
    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout
    (event,) = [e for e in audit.events(open_sink(sink)) if e["event"] == "prune"]
    assert (event["results"], event["held"], event["cutoff"]) == (29, 1, out["cutoff"])
    out = _prune(sink, "--config", str(config))  # nothing left to take
    assert (out["results"], out["held"]) == (0, 1)


def test_prune_s3_skips_locked_files_and_counts_them(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3, lock=True)  # versioned, Object Lock enabled; the sink locks nothing by itself
    sink = f"s3://{bucket}/a"
    _archive(sqlite_url, sink)
    oldest = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/data/")["Contents"]
              if f"date={DAY - dt.timedelta(days=5)}" in o["Key"]]
    assert len(oldest) == 1
    s3.put_object_retention(Bucket=bucket, Key=oldest[0], Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)})
    out = _prune(sink)
    assert (out["results"], out["locked_files"], out["locked_results"], out["files_rewritten"]) == (20, 1, 10, 1), out
    assert "Object Lock" in str(out["locked"])
    kept = [*NEWER, *OLDEST]
    assert Counter(archived_ids(sink)) == Counter(kept)
    assert Counter(restored(sink, kept)) == Counter(kept)
    proc = cli("verify", "--sink", sink)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("stage", ["after-plan", "after-file", "after-register", "after-revision", "after-index", "mid-erase"])
def test_prune_killed_at_each_step_is_finished_by_the_next(sqlite_url: str, tmp_path: Path, stage: str) -> None:
    import subprocess
    import sys

    sink = str(tmp_path / "archive")
    _archive(sqlite_url, sink)
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "forget_crash.py"), stage, "prune", "--sink", sink,
                           "--older-than", _age()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert list((Path(sink) / "rewrites").iterdir())
    proc = cli("verify", "--sink", sink)
    assert proc.returncode == 0, proc.stdout
    seen = Counter(archived_ids(sink))
    assert {t: seen[t] for t in NEWER} == dict.fromkeys(NEWER, 1) and all(n == 1 for n in seen.values())
    assert Counter(restored(sink, NEWER)) == Counter(NEWER)
    out = _prune(sink)  # finishes the plan first, then finds nothing more to take
    assert len(out["finished_earlier"]) == 1 and out["results"] == 0  # type: ignore[arg-type]
    assert not list((Path(sink) / "rewrites").iterdir())
    assert Counter(archived_ids(sink)) == Counter(NEWER)
    assert Counter(restored(sink, NEWER)) == Counter(NEWER)
    assert all(holders(local_bytes(Path(sink)), marker(t)) == [] for t in [*OLDER, *OLDEST])
    assert cli("verify", "--sink", sink).returncode == 0


def test_prune_kill_9_at_random_points_loses_and_duplicates_nothing(sqlite_url: str, tmp_path: Path) -> None:
    from prune_kill_loop import loop, make

    sink = str(tmp_path / "archive")
    out = loop(sink, make(sqlite_url, sink), rounds=8)
    print(out)
    assert out.killed >= 3, out
    assert (out.lost, out.duplicated, out.unrestorable, out.verify_failed, out.left, out.bytes_left) == (0, 0, 0, 0, 0, 0), out
