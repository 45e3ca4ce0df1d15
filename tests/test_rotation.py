"""Rotating verification (archive/rotation.py): --subset n/t partitions the files, --max-duration
reads the least recently verified first and says how many it left, each read is recorded in the
archive, setup_beat schedules it; and the audit log of a run and its verifies (no result content)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path

import pytest
from conftest import cli

from celery_archive.archive import manifest as mf
from celery_archive.archive import rotation
from celery_archive.archive.catalog import verify_archive
from celery_archive.archive.rotation import Subset
from celery_archive.sinks import open_sink

VERIFY_FAILED, USAGE = 3, 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's archive: one run of 18 data files (made once; each test works on a copy)."""
    home = tmp_path_factory.mktemp("demo")
    assert cli("demo", "--dir", str(home / "d"), "--json").returncode == 0
    return home / "d" / "archive"


@pytest.fixture
def archive(demo: Path, tmp_path: Path) -> str:
    import shutil

    shutil.copytree(demo, tmp_path / "archive")
    return str(tmp_path / "archive")


def _keys(where: str) -> list[str]:
    return [e.key for e in mf.committed_files(open_sink(where))]


def test_subsets_partition_the_files_and_each_read_is_recorded(archive: str) -> None:
    keys = _keys(archive)
    assert len(keys) == 18
    for t in (1, 2, 7):
        parts = [{k for k in keys if Subset(n, t).holds(k)} for n in range(1, t + 1)]
        assert set().union(*parts) == set(keys) and sum(map(len, parts)) == len(keys)  # disjoint, and all
    sink = open_sink(archive)
    before = {o.key for o in sink.list("verified/")}  # the demo verified once already
    counts = []
    for n in range(1, 8):
        report = verify_archive(archive, subset=Subset(n, 7))
        assert report.ok and report.subset == f"{n}/7", report.problems
        counts.append(report.files)
    assert counts == [len([k for k in keys if Subset(n, 7).holds(k)]) for n in range(1, 8)] and sum(counts) == 18
    records = [o.key for o in sink.list("verified/") if o.key not in before]
    by_file = {k: len(list(g)) for k, g in itertools.groupby(sorted(r.split("/")[1] for r in records))}
    assert by_file == {rotation.file_id(k): 1 for k in keys}  # 1/7..7/7 read every file exactly once
    out = cli("verify", "--sink", archive, "--subset", "3/7", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["files"] == counts[2]
    assert "(subset 3/7)" in cli("verify", "--sink", archive, "--subset", "3/7").stdout


@pytest.mark.parametrize("bad", ["0/7", "8/7", "x", "3/0", "1/", "/7", "-1/7", "2/1"])
def test_a_bad_subset_is_refused_with_what_to_give(archive: str, bad: str) -> None:
    before = list(open_sink(archive).list("verified/"))
    out = cli("verify", "--sink", archive, "--subset", bad)
    assert out.returncode == USAGE and "give n/t with 1 <= n <= t" in out.stderr and repr(bad) in out.stderr
    assert list(open_sink(archive).list("verified/")) == before  # nothing was read


def test_max_duration_stops_and_says_how_many_are_left(archive: str) -> None:
    out = cli("verify", "--sink", archive, "--max-duration", "0s", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["files"] == 0 and report["left"] == 18
    text = cli("verify", "--sink", archive, "--max-duration", "0s").stdout
    assert "18 file(s) left unread when --max-duration was up: the next verify reads them first" in text
    out = cli("verify", "--sink", archive, "--max-duration", "1h", "--json")
    assert json.loads(out.stdout)["files"] == 18 and json.loads(out.stdout)["left"] == 0
    bad = cli("verify", "--sink", archive, "--max-duration", "soon")
    assert bad.returncode == USAGE and "invalid duration 'soon'" in bad.stderr


def test_max_duration_rotates_least_recently_verified_first(archive: str) -> None:
    """A clock that lets five files begin per verify: four verifies read all 18 before any twice."""
    sink = open_sink(archive)
    keys = _keys(archive)

    def clock_allowing(n: int) -> object:
        ticks = itertools.chain([0.0], itertools.repeat(0.0, n), itertools.repeat(1e9))  # the deadline's own reading first
        return lambda: next(ticks)

    seen: list[set[str]] = []
    for _ in range(4):
        before = rotation.last_verified(sink)
        report = verify_archive(archive, max_duration=dt.timedelta(seconds=1), clock=clock_allowing(5))  # type: ignore[arg-type]
        after = rotation.last_verified(sink)
        read = {k for k in keys if after.get(rotation.file_id(k)) != before.get(rotation.file_id(k))}
        assert report.ok and report.files == 5 == len(read) and report.left == 13
        seen.append(read)
    first_three = seen[0] | seen[1] | seen[2]
    assert len(first_three) == 15  # never verified ones first: no file twice
    assert set(keys) - first_three <= seen[3]  # the three never read, then the two read longest ago
    assert seen[3] - (set(keys) - first_three) <= seen[0]


def test_setup_beat_schedules_the_rotating_verify(archive: str) -> None:
    from celery import Celery

    import celery_archive
    from celery_archive.integration import VERIFY_ENTRY, VERIFY_TASK

    app = Celery("beat-verify", set_as_current=False)
    celery_archive.setup_beat(app, sink=archive, schedule=3600.0, older_than="30d", verify_schedule=600.0,
                              verify_options={"max_duration": "1h"})
    entry = app.conf.beat_schedule[VERIFY_ENTRY]
    assert entry == {"task": VERIFY_TASK, "schedule": 600.0, "kwargs": {"sink": archive, "max_duration": "1h"}}
    result = app.tasks[VERIFY_TASK].apply(kwargs=entry["kwargs"])  # the task's own code, in this process
    assert result.successful() and result.get()["files"] == 18 and result.get()["ok"] is True
    sink = open_sink(archive)
    assert "celery.backend_cleanup" in app.conf.beat_schedule
    sink.delete(next(iter(_keys(archive))))  # a data file lost: the scheduled verify fails loudly
    failed = app.tasks[VERIFY_TASK].apply(kwargs=entry["kwargs"])
    assert failed.failed() and "failed verification" in str(failed.result)


def test_audit_log_of_a_run_and_its_verifies_holds_no_result_content(archive: str) -> None:
    assert cli("verify", "--sink", archive).returncode == 0
    out = cli("audit", "--sink", archive, "--json")
    assert out.returncode == 0
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(e["command"] == "audit" for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["run", "purge"] and kinds[2:] and set(kinds[2:]) == {"verify"}
    run, purge, verify = events[0], events[1], events[-1]
    (run_id,) = mf.committed_runs(open_sink(archive))
    assert run["run_id"] == purge["run_id"] == run_id and run["results"] == purge["verified"] == purge["deleted"]
    assert run["manifest_sha256"] == verify["head"] and verify["ok"] is True and verify["files"] == 18
    sink = open_sink(archive)
    blob = b"".join(sink.read(o.key) for o in sink.list("audit/"))
    for content in (b"demo-0", b"worker0@demo", b"Traceback", b"order", b"hostname"):
        assert content not in blob  # ids, results, tracebacks never reach the audit log
    text = cli("audit", "--sink", archive).stdout
    assert "run " in text and f"run_id={run_id}" in text and "verify " in text
    empty = cli("audit", "--sink", str(Path(archive).parent / "nothing"))
    assert empty.returncode == 0 and "no audit events" in empty.stdout


def test_a_verify_that_fails_is_in_the_audit_log(archive: str) -> None:
    sink = open_sink(archive)
    sink.delete(_keys(archive)[0])
    assert cli("verify", "--sink", archive).returncode == VERIFY_FAILED
    last = json.loads(cli("audit", "--sink", archive, "--json").stdout.splitlines()[-1])
    assert last["event"] == "verify" and last["ok"] is False and last["problems"] >= 1


def test_subsets_and_max_duration_on_s3(sqlite_url: str, s3_bucket: str) -> None:
    from conftest import age_rows, celery_app

    where = f"s3://{s3_bucket}/prod"
    app = celery_app(sqlite_url)
    for day in range(5):  # five days: five data files
        for i in range(4):
            app.backend.store_result(f"s3-{day}-{i}", i, "SUCCESS")
        age_rows(sqlite_url, 40 + day, f"task_id LIKE 's3-{day}-%'")
    assert cli("run", "--source", sqlite_url, "--sink", where, "--older-than", "30d").returncode == 0
    keys = _keys(where)
    assert len(keys) == 5
    files = [json.loads(cli("verify", "--sink", where, "--subset", f"{n}/3", "--json").stdout)["files"] for n in (1, 2, 3)]
    assert files == [sum(Subset(n, 3).holds(k) for k in keys) for n in (1, 2, 3)] and sum(files) == 5
    assert set(rotation.last_verified(open_sink(where))) == {rotation.file_id(k) for k in keys}
    report = json.loads(cli("verify", "--sink", where, "--max-duration", "0s", "--json").stdout)
    assert report["files"] == 0 and report["left"] == 5 and report["ok"] is True and report["head"]
