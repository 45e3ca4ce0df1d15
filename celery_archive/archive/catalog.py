"""What an archive holds: its runs and their state, and a verify of all of them (or one run, a subset of
the files, the least recently verified for a while), with the manifests' hash chain."""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from celery_archive.archive import audit, chain, rotation
from celery_archive.archive import manifest as mf
from celery_archive.archive.manifest import FileEntry
from celery_archive.archive.rotation import Subset
from celery_archive.errors import ConfigError, DamagedObjectError, SinkError
from celery_archive.pipeline.verify import check_file, located_path
from celery_archive.sinks import Sink, open_sink
from celery_archive.spool import spool_dir


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created_at: str
    source: str
    cutoff: str
    files: int
    rows: int
    bytes: int
    state: str  # purged | kept (--no-delete) | pending (purge not finished)
    deleted: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_runs(sink_url: str) -> list[RunInfo]:
    """Committed runs, oldest first."""
    sink = open_sink(sink_url)
    reports = mf.reports(sink)
    out = []
    for run_id, key in mf.latest_manifests(sink).items():
        m = mf.load_manifest(sink, run_id, key)
        r = reports.get(run_id)
        state = "pending" if r is None else ("purged" if r.purged else "kept")
        out.append(RunInfo(run_id, m.created_at, m.source, m.cutoff, m.totals.files, m.totals.rows, m.totals.bytes,
                           state, None if r is None else r.deleted))
    return out


def running(sink_url: str) -> list[dict[str, Any]]:
    """The run holding the archive's lease, if it has not committed yet: its id, who holds
    the lease, and the data files it (its shards) stored so far."""
    from celery_archive.archive.layout import DATA, run_id_of
    from celery_archive.pipeline.lease import Lease

    sink = open_sink(sink_url)
    cur = Lease(sink, "runs").latest()
    if cur is None or cur.free or not cur.body.get("run_id"):
        return []
    run_id = str(cur.body["run_id"])
    if run_id in set(mf.committed_runs(sink)):
        return []
    files = [o for o in sink.list(DATA) if run_id_of(o.key) == run_id]
    return [{"run_id": run_id, "state": "running", "held_by": cur.describe(), "files_so_far": len(files),
             "bytes_so_far": sum(o.size for o in files)}]


@dataclass
class ArchiveVerifyReport:
    sink: str
    runs: int = 0
    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)
    head: str | None = None  # sha256 of the last manifest in the hash chain: keep it elsewhere, check it with --head
    chain_length: int = 0
    subset: str | None = None
    left: int = 0  # files --max-duration left for the next verify (least recently verified first)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"command": "verify", "ok": self.ok, **asdict(self)}


def verify_archive(sink_url: str, run_id: str | None = None, subset: Subset | None = None,
                   max_duration: dt.timedelta | None = None, expect_head: str | None = None,
                   clock: Callable[[], float] = time.monotonic) -> ArchiveVerifyReport:
    """Read back every file of every committed run (or of ``run_id``; of ``subset``; the least
    recently verified first until ``max_duration`` is up) and check it; check the hash chain of
    the manifests (archive/chain.py); data files that no manifest names are problems unless their
    run never committed. Each file read and the verify itself are recorded in the archive."""
    sink = open_sink(sink_url)
    latest = mf.latest_manifests(sink)  # each run's latest manifest revision, from one listing
    committed = list(latest)
    report = ArchiveVerifyReport(sink.url, subset=None if subset is None else str(subset))
    if run_id is None and not committed and not any(True for _ in sink.list(mf.DATA)) and not any(True for _ in sink.list(mf.OUTCOMES)):
        raise ConfigError(f"no archive at {sink.url}: it holds no manifests, outcomes or data files; "
                          "check --sink (a run writes manifests/ and data/ there)")
    chosen: list[tuple[str, FileEntry]] = []
    for rid in [run_id] if run_id else committed:
        report.runs += 1
        try:
            manifest = mf.load_manifest(sink, rid, latest.get(rid))
        except DamagedObjectError as exc:  # damage to report (exit 3); the other runs are still checked
            report.problems.append(f"run {rid}: {exc}")
            continue
        listed = sum(e.rows for e in manifest.files)
        if listed != manifest.totals.rows:
            report.problems.append(f"run {rid}: manifest lists {listed} rows in its files but {manifest.totals.rows} were extracted")
        chosen += [(rid, e) for e in manifest.files if subset is None or subset.holds(e.key)]
    if max_duration is not None:
        chosen = rotation.oldest_first(chosen, rotation.last_verified(sink))
    recorder = _Recorder(sink, report)
    deadline = None if max_duration is None else clock() + max_duration.total_seconds()
    report.left = _read_back(sink, chosen, report, recorder, deadline, clock)
    links = chain.check(sink, expect_head)
    report.problems += links.problems
    report.notes += links.notes
    report.head, report.chain_length = links.head, links.length
    if run_id is None:
        _unnamed(sink, set(committed), set(mf.reports(sink, damaged=report.problems)), report)
    recorder.event(ok=report.ok, runs=report.runs, files=report.files, rows=report.rows, problems=len(report.problems),
                   head=report.head, chain_length=report.chain_length, run_id=run_id, subset=report.subset,
                   max_duration=None if max_duration is None else max_duration.total_seconds(), left=report.left)
    return report


class _Recorder:
    """Records what a verify read (rotation.py) and its result (the audit log). A sink that
    refuses writes (read-only credentials) leaves one note; the verify's result stands."""

    def __init__(self, sink: Sink, report: ArchiveVerifyReport) -> None:
        self.sink, self.report, self.refused = sink, report, False

    def _try(self, write: Callable[[], None]) -> None:
        if self.refused:
            return
        try:
            write()
        except SinkError as exc:
            self.refused = True
            self.report.notes.append(f"could not record this verify in the archive ({exc}): the files were checked all the "
                                     "same; give verify write access to audit/ and verified/ to keep its record")

    def file(self, entry: FileEntry, ok: bool) -> None:
        self._try(lambda: rotation.record(self.sink, entry, ok))

    def event(self, **fields: Any) -> None:
        self._try(lambda: audit.record(self.sink, "verify", **fields))


def _read_back(sink: Sink, chosen: list[tuple[str, FileEntry]], report: ArchiveVerifyReport, recorder: _Recorder,
               deadline: float | None, clock: Callable[[], float]) -> int:
    """Check ``chosen`` files, two at a time; none is begun after ``deadline``. Returns how many were left."""
    pending: deque[tuple[str, FileEntry, Path, Future[str | None]]] = deque()
    todo = deque(chosen)
    with spool_dir(None) as tmp, ThreadPoolExecutor(max_workers=2, thread_name_prefix="celery-archive-verify") as pool:
        while todo or pending:
            while todo and len(pending) < 2 and (deadline is None or clock() < deadline):
                rid, entry = todo.popleft()
                dest = Path(tmp) / f"verify-{report.files + len(pending):06d}"
                pending.append((rid, entry, dest, pool.submit(check_file, sink, entry, dest)))
            if not pending:
                break
            rid, entry, dest, check = pending.popleft()
            problem = check.result()
            dest.unlink(missing_ok=True)
            located_path(dest).unlink(missing_ok=True)
            report.files += 1
            report.rows += entry.rows
            if problem:
                report.problems.append(f"run {rid}: {problem}")
            recorder.file(entry, problem is None)
    return len(todo)


def _unnamed(sink: Sink, committed: set[str], reported: set[str], report: ArchiveVerifyReport) -> None:
    """Data files no manifest names: a lost manifest is a problem, an uncommitted run is not."""
    from celery_archive.index.packs import referenced_runs

    uncommitted = mf.uncommitted_files(sink, committed)
    if not uncommitted:
        return
    indexed = referenced_runs(sink)
    for rid, keys in sorted(uncommitted.items()):
        outcome = mf.load_outcome(sink, rid)
        state = None if outcome is None else outcome.state
        if state == mf.COMMITTED:
            report.problems.append(f"run {rid}: committed ({mf.outcome_key(rid)}) but its manifest is missing; "
                                   f"`celery-archive manifest rebuild --sink {sink.url}` (or the next run) writes it again")
        elif state is None and (rid in reported or rid in indexed):
            report.problems.append(f"run {rid}: its manifest is lost but its {len(keys)} data file(s) are kept (it has "
                                   f"{'a run report' if rid in reported else 'restore index entries'}); "
                                   f"`celery-archive manifest rebuild --sink {sink.url} --run {rid}` makes it again from them")
        else:
            report.uncommitted.extend(keys)
