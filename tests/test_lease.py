"""The archive's lease and the commit decision, as logic (an injectable clock, a real local
sink): renewal, takeover only after a ttl without renewal, fencing of a holder that lost it or
cannot renew, a lease removed by hand, and a paused run that comes back after it was abandoned."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_archive.archive import manifest as mf
from celery_archive.errors import LeaseLostError, LockError, SinkError
from celery_archive.pipeline.lease import PREFIX, FencedSink, Lease
from celery_archive.sinks.local import LocalSink


class FakeClock:
    """Monotonic and wall time that move only when told (or when the lease sleeps)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.on_sleep: Callable[[], None] | None = None

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=self.t)

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        if self.on_sleep is not None:
            self.on_sleep()


class FailingWrites(LocalSink):
    """A local sink whose writes fail while ``failing`` is set (a store that cannot be reached)."""

    failing = False

    def put_bytes(self, key: str, data: bytes) -> object:  # type: ignore[override]
        if self.failing:
            raise SinkError(f"cannot reach the store to write {key}")
        return super().put_bytes(key, data)


def versions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "locks").iterdir())


def test_acquire_renew_release(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    clock = FakeClock()
    a = Lease(sink, "run-a", 60, clock)
    a.acquire()
    assert a.held and versions(tmp_path) == ["lease-000000000000.json"]
    a.renew()
    assert versions(tmp_path) == ["lease-000000000001.json"]  # the older version is gone, never the current
    a.check()
    a.release()
    latest = Lease(sink, "probe").latest()
    assert latest is not None and latest.free and latest.number == 2
    b = Lease(sink, "run-b", 60, FakeClock())
    b.acquire()  # a free lease is taken at once
    assert b.version == 3
    b.release()


def test_a_renewal_seen_while_watching_refuses(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    a = Lease(sink, "run-a", 60, FakeClock())
    a.acquire()
    watcher = FakeClock()
    watcher.on_sleep = a.renew  # the holder is alive: it renews while the other run watches
    b = Lease(sink, "run-b", 60, watcher)
    with pytest.raises(LockError, match="renewed it while this run waited"):
        b.acquire()
    a.check()  # still the holder
    assert not b.held
    a.release()


def test_a_lease_not_renewed_for_its_ttl_is_taken_over_and_its_old_holder_fenced(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    clock_a, clock_b = FakeClock(), FakeClock()
    a = Lease(sink, "run-a", 60, clock_a)
    a.acquire()
    waits: list[str] = []
    b = Lease(sink, "run-b", 60, clock_b, on_wait=waits.append)
    started = clock_b.t
    b.acquire()  # nobody renews: after 60 s of watching it is b's
    assert clock_b.t - started >= 60 and b.held and waits and "watching it for up to 60 s" in waits[0]
    clock_a.t += 25  # a comes back: its next check renews first, and finds the lease is not its own
    fenced = FencedSink(sink, a)
    with pytest.raises(LeaseLostError, match="lost the lease"):
        fenced.put_bytes("manifests/x.json", b"{}")
    assert not (tmp_path / "manifests" / "x.json").exists()
    with pytest.raises(LeaseLostError):
        fenced.delete("data/anything")
    b.check()
    b.release()


def test_a_holder_that_cannot_renew_stops_acting_before_anyone_may_take_over(tmp_path: Path) -> None:
    sink = FailingWrites(tmp_path)
    clock = FakeClock()
    a = Lease(sink, "run-a", 60, clock)
    a.acquire()
    confirmed = clock.t
    sink.failing = True
    clock.t += 25
    a.check()  # a renewal fails, but the last one is less than ttl/2 old: it may still act
    clock.t += 5.1
    with pytest.raises(LeaseLostError, match=r"could not renew the lease .* for 30 s"):
        a.check()
    # a watcher that saw the last version no earlier than it was written takes over at
    # confirmed + 60 at the soonest: the holder stopped acting at confirmed + 30
    assert clock.t - confirmed < 60
    sink.failing = False
    a.renew()  # the store answers again and nobody took over: it renews and may act again
    a.check()
    a.release()


def test_a_lease_removed_by_hand_fences_its_holder(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    a = Lease(sink, "run-a", 60, FakeClock())
    a.acquire()
    for p in (tmp_path / "locks").iterdir():
        p.unlink()
    b = Lease(sink, "run-b", 60, FakeClock())
    b.acquire()  # no lease at all: taken at once
    a.renew()
    with pytest.raises(LeaseLostError, match="taken over or removed"):
        a.check()
    b.check()
    b.release()


def test_two_runs_taking_a_free_lease_at_once(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    results: list[str] = []
    leases = [Lease(sink, f"run-{i}", 1.2) for i in range(2)]
    start = threading.Barrier(2)

    def take(lease: Lease) -> None:
        start.wait()
        try:
            lease.acquire()
            results.append("held")
        except LockError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r == "held" for r in results) == [False, True], results
    for lease in leases:
        lease.release()
    assert all(name.startswith(PREFIX.split("/")[1]) for name in versions(tmp_path))


def test_a_paused_run_cannot_commit_after_it_was_abandoned(tmp_path: Path) -> None:
    """The commit and the abandonment are one create-only object: whichever comes first stands."""
    sink = LocalSink(tmp_path)
    manifest = mf.Manifest.from_json({"run_id": "20260101T000000Z-00000a", "files": [], "totals": {"files": 0, "rows": 0, "bytes": 0}})
    assert mf.abandon(sink, manifest.run_id, by="20260101T000100Z-00000b").state is mf.ABANDONED
    with pytest.raises(LeaseLostError, match="abandoned by run 20260101T000100Z-00000b"):
        mf.commit(sink, manifest)
    assert not (tmp_path / mf.manifest_key(manifest.run_id)).exists()

    other = dataclasses.replace(manifest, run_id="20260101T000200Z-00000c")
    mf.commit(sink, other)
    assert mf.abandon(sink, other.run_id, by="late").state is mf.COMMITTED  # committed first: kept
    mf.commit(sink, other)  # committing again (a resumed run) is the same decision
    assert mf.load_manifest(sink, other.run_id) == other


def test_v1_manifests_reports_and_outcomes_read_into_types_and_write_back_byte_for_byte(tmp_path: Path) -> None:
    """The typed manifest keeps the on-disk JSON: every manifest and run report of the v1
    fixture archive, read and written again, is the same bytes."""
    fixture = Path(__file__).parent / "fixtures" / "archive-v1"
    sink = LocalSink(fixture)
    runs = mf.committed_runs(sink)
    assert len(runs) == 2
    for run_id in runs:
        manifest = mf.load_manifest(sink, run_id)
        assert "rules" in manifest.absent and all(isinstance(e.format, mf.Format) for e in manifest.files)
        assert manifest.totals.rows == sum(e.rows for e in manifest.files)
        copy = LocalSink(tmp_path / run_id)
        mf.publish(copy, manifest)
        key = mf.manifest_key(run_id)
        assert (tmp_path / run_id / key).read_bytes() == (fixture / key).read_bytes()
    for run_id, record in mf.reports(sink).items():
        copy = LocalSink(tmp_path / f"r-{run_id}")
        mf.write_report(copy, record)
        key = mf.report_key(run_id, record.purged)
        assert (tmp_path / f"r-{run_id}" / key).read_bytes() == (fixture / key).read_bytes()
    with pytest.raises(SinkError, match="has no 'key'"):
        mf.Manifest.from_json({"run_id": "x", "files": [{"format": "parquet"}]})
    with pytest.raises(SinkError, match="neither parquet nor jsonl"):
        mf.FileEntry.from_json({"format": "csv"})


def test_a_run_taken_over_while_paused_says_so_whatever_it_then_trips_on(tmp_path: Path) -> None:
    """The field test's paused run (SIGSTOP past its ttl): the run that took over abandoned it and
    removed its files, staging directory included. Whatever the paused run touches next fails;
    the user must hear that its lease was taken (exit 4, run again), and it must have changed nothing."""
    import shutil

    from conftest import age_rows, celery_app, table_rows

    from celery_archive import RunConfig, parse_duration, run

    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    app = celery_app(url)
    for i in range(300):
        app.backend.store_result(f"t{i:04d}", {"i": i}, "SUCCESS")
    age_rows(url, 40)
    sink_root = tmp_path / "archive"
    taken: list[Lease] = []

    def take_over(_taken_so_far: int) -> None:
        if taken:
            return
        for p in (sink_root / "locks").iterdir():  # as if the paused run had gone stale
            p.unlink()
        other = Lease(LocalSink(sink_root), "run-other", 60)
        other.acquire()
        taken.append(other)
        for spool in (sink_root / ".tmp-spool").iterdir():  # its clean-up of what the paused run left
            shutil.rmtree(spool)

    with pytest.raises(LeaseLostError, match=r"lost the lease.*taken over or removed"):
        run(RunConfig(source=url, sink=str(sink_root), older_than=parse_duration("30d"), batch_size=50,
                      max_file_bytes=4096), progress=take_over)
    taken[0].release()
    assert len(table_rows(url)) == 300  # nothing deleted
    assert not list(mf.committed_files(LocalSink(sink_root)))


def test_any_holder_taken_over_reports_the_takeover_not_what_it_tripped_on(tmp_path: Path) -> None:
    """forget, prune and the index commands hold the lease as a run does: the same rule."""
    sink = LocalSink(tmp_path)
    a = Lease(sink, "maint-a", 60, FakeClock())
    with pytest.raises(LeaseLostError, match=r"lost the lease.*it then failed with: .*gone"):
        with a.holding():
            for p in (tmp_path / "locks").iterdir():
                p.unlink()
            b = Lease(sink, "run-b", 60, FakeClock())
            b.acquire()
            raise FileNotFoundError(2, "gone")
    b.release()
    c = Lease(sink, "maint-c", 60, FakeClock())
    with pytest.raises(FileNotFoundError):  # a failure of a holder that still holds it is its own
        with c.holding():
            raise FileNotFoundError(2, "gone")
    assert not c.held
