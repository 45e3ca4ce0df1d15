"""``prune``: results whose ``date_done`` is older than an age leave the archive. A file wholly
older goes whole; one that is partly older is rewritten without them (rewrite.py, as forget).
The config's ``[hold]`` keeps what it names; a file under S3 Object Lock retention or a legal
hold is skipped and counted, never an error half-way."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.archive import manifest as mf
from celery_archive.archive import rewrite
from celery_archive.crypto import cipher_of
from celery_archive.formats import read_tables
from celery_archive.sinks import download
from celery_archive.times import iso

if TYPE_CHECKING:
    from celery_archive.pipeline.rules import Hold
    from celery_archive.sinks import Sink


@dataclass
class PruneReport:
    sink: str
    cutoff: str  # results done before this instant (UTC) go
    dry_run: bool
    results: int = 0  # taken out (dry run: would be)
    files_removed: int = 0  # wholly older: removed whole
    files_rewritten: int = 0  # partly older: written again without them
    held: int = 0  # older, but kept by the config's [hold]
    locked_files: int = 0  # skipped: Object Lock retention or a legal hold
    locked_results: int = 0  # the older results in those
    locked: list[str] = field(default_factory=list)  # why, for the first few
    runs: list[str] = field(default_factory=list)
    rewrite_id: str | None = None
    finished_earlier: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"command": "prune", "ok": True, **asdict(self)}


def prune(sink: Sink, spool: Path, cutoff: dt.datetime, hold: Hold, dry_run: bool = False) -> PruneReport:
    """Take out every result done before ``cutoff`` (aware UTC) that ``hold`` does not keep."""
    report = PruneReport(sink.url, iso(cutoff), dry_run)
    if not dry_run:
        report.finished_earlier = [d.plan.rewrite_id for d in rewrite.finish_pending(sink, spool)]
    drop = rewrite.Drop(before=iso(cutoff), hold_ids=frozenset(hold.task_ids), hold_names=tuple(hold.names))
    files = []
    for entry in mf.committed_files(sink):
        if drop.untouched(entry):
            continue
        go, held = _count(sink, spool, entry, drop)
        report.held += held
        why = sink.retention(entry.key) if go else None
        if why is not None:
            report.locked_files += 1
            report.locked_results += go
            if len(report.locked) < 5:
                report.locked.append(why)
            continue
        if go:
            files.append(entry.key)
            report.results += go
            if go == entry.rows:
                report.files_removed += 1
            else:
                report.files_rewritten += 1
    report.runs = sorted({mf.run_id_of(k) for k in files})
    if dry_run or not files:
        return report
    p = rewrite.plan(sink, "prune", f"older than {iso(cutoff)}", drop, files, results=report.results, cutoff=iso(cutoff),
                     held=report.held, locked_files=report.locked_files)
    rewrite.record(sink, p)
    rewrite.execute(sink, spool, p)
    report.rewrite_id = p.rewrite_id
    return report


def _count(sink: Sink, spool: Path, entry: mf.FileEntry, drop: rewrite.Drop) -> tuple[int, int]:
    """(rows of the file that go, older rows that the hold keeps)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if drop.whole(entry):
        return entry.rows, 0
    path = spool / "prune-count.data"
    go = older = 0
    try:
        download(sink, entry.key, path)
        for t in read_tables(path, entry.format, entry.compression, ["task_id", "name", "date_done"],
                             cipher=cipher_of(sink, entry)):
            go += pc.sum(drop.mask(t)).as_py() or 0
            dd = t.column("date_done")
            before = pa.scalar(dt.datetime.fromisoformat((drop.before or "").replace("Z", "+00:00")).replace(tzinfo=None), dd.type)
            older += pc.sum(pc.fill_null(pc.less(dd, before), False)).as_py() or 0
    finally:
        path.unlink(missing_ok=True)
    return go, older - go
