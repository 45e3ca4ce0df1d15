"""What an archive holds: its runs and their state, and a verify of all (or one) of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from celery_archive.archive import manifest as mf
from celery_archive.errors import ConfigError, DamagedObjectError
from celery_archive.pipeline.verify import verify_run
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


@dataclass
class ArchiveVerifyReport:
    sink: str
    runs: int = 0
    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"command": "verify", "ok": self.ok, **asdict(self)}


def verify_archive(sink_url: str, run_id: str | None = None) -> ArchiveVerifyReport:
    """Read back every file of every committed run (or of ``run_id``) and check it; data
    files that no manifest names are problems unless their run never committed."""
    sink = open_sink(sink_url)
    latest = mf.latest_manifests(sink)
    committed = list(latest)
    report = ArchiveVerifyReport(sink.url)
    if run_id is None and not committed and not any(True for _ in sink.list(mf.DATA)) and not any(True for _ in sink.list(mf.OUTCOMES)):
        raise ConfigError(f"no archive at {sink.url}: it holds no manifests, outcomes or data files; "
                          "check --sink (a run writes manifests/ and data/ there)")
    run_ids = [run_id] if run_id else committed
    with spool_dir(None) as tmp:
        for rid in run_ids:
            try:
                manifest = mf.load_manifest(sink, rid, latest.get(rid))
            except DamagedObjectError as exc:  # damage to report (exit 3); the other runs are still checked
                report.runs += 1
                report.problems.append(f"run {rid}: {exc}")
                continue
            r = verify_run(sink, manifest, Path(tmp))
            report.runs += 1
            report.files += r.files
            report.rows += r.rows
            report.problems.extend(f"run {rid}: {p}" for p in r.problems)
    if run_id is None:
        _unnamed(sink, set(committed), report)
    return report


def _unnamed(sink: Sink, committed: set[str], report: ArchiveVerifyReport) -> None:
    """Data files no manifest names: a lost manifest is a problem, an uncommitted run is not."""
    from celery_archive.index.packs import referenced_runs

    uncommitted = mf.uncommitted_files(sink, committed)
    if not uncommitted:
        return
    reported, indexed = set(mf.reports(sink)), referenced_runs(sink)
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
