"""What an archive holds: its runs and their state, and a verify of all (or one) of them."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from celery_archive.pipeline import manifest as mf
from celery_archive.pipeline.verify import verify_run
from celery_archive.sinks import open_sink


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
    for run_id in mf.committed_runs(sink):
        m = mf.load_manifest(sink, run_id)
        r = reports.get(run_id)
        state = "pending" if r is None else ("purged" if r.get("purged") else "kept")
        out.append(RunInfo(run_id, m["created_at"], m["source"], m["cutoff"], m["totals"]["files"],
                           m["totals"]["rows"], m["totals"]["bytes"], state, None if r is None else r.get("deleted")))
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
    """Read back every file of every committed run (or of ``run_id``) and check it."""
    sink = open_sink(sink_url)
    committed = mf.committed_runs(sink)
    report = ArchiveVerifyReport(sink.url)
    run_ids = [run_id] if run_id else committed
    with tempfile.TemporaryDirectory(prefix="celery-archive-verify-") as tmp:
        for rid in run_ids:
            r = verify_run(sink, mf.load_manifest(sink, rid), Path(tmp))
            report.runs += 1
            report.files += r.files
            report.rows += r.rows
            report.problems.extend(f"run {rid}: {p}" for p in r.problems)
    if run_id is None:
        report.uncommitted = list(mf.orphan_files(sink, set(committed)))
    return report
