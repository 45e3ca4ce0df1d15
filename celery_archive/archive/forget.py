"""``forget``: named results taken out of the archive for good (an erasure request). Every
data file holding one is rewritten without it, its run gets a new manifest revision, the
restore index is made again, then the old files are erased (rewrite.py does each step). In an
encrypted archive the old files' data keys are destroyed too: a file that S3 Object Lock keeps
is then unreadable, so its retention no longer stands in the way (crypto-shredding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.archive import manifest as mf
from celery_archive.archive import rewrite
from celery_archive.errors import ConfigError, RetainedError
from celery_archive.index.packs import lookup

if TYPE_CHECKING:
    from celery_archive.sinks import Sink


@dataclass
class ForgetReport:
    sink: str
    reason: str
    dry_run: bool
    forgotten: list[str] = field(default_factory=list)  # ids taken out (or, dry run, found)
    missing: list[str] = field(default_factory=list)  # ids not in the archive
    results: int = 0
    files_rewritten: int = 0
    files_removed: int = 0
    runs: list[str] = field(default_factory=list)
    rewrite_id: str | None = None
    keys_destroyed: list[str] = field(default_factory=list)  # encrypted: the old files' data keys (keys/...)
    finished_earlier: list[str] = field(default_factory=list)  # plans a crash left, finished first

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"command": "forget", "ok": True, **asdict(self)}


def forget(sink: Sink, spool: Path, task_ids: Sequence[str], reason: str, dry_run: bool = False) -> ForgetReport:
    """Take ``task_ids`` out of the archive (``sink`` fenced by the lease unless ``dry_run``).
    Refuses, changing nothing, when a file to remove cannot be deleted (Object Lock) and is not
    encrypted (an encrypted one is erased by destroying its data key)."""
    if not reason.strip():
        raise ConfigError("--reason is required: say why these results are erased (it goes into the audit log)")
    ids = list(dict.fromkeys(t.strip() for t in task_ids if t.strip()))
    if not ids:
        raise ConfigError("no task ids given: name them, or --ids-from FILE (one a line)")
    report = ForgetReport(sink.url, reason, dry_run)
    if not dry_run:
        for done in rewrite.finish_pending(sink, spool):
            report.finished_earlier.append(done.plan.rewrite_id)
            hashes, salt = done.plan.drop.id_hashes, done.plan.drop.salt
            report.forgotten += [t for t in ids if salt and rewrite.hash_id(salt, t) in hashes]
    current = {e.key: e for e in mf.committed_files(sink)}
    entries = lookup(sink, ids)
    files = sorted({e["key"] for es in entries.values() for e in es if e["key"] in current})
    found = [t for t in ids if any(e["key"] in current for e in entries.get(t, []))]
    report.missing = [t for t in ids if t not in found and t not in report.forgotten]
    report.results = sum(1 for t in found for e in entries[t] if e["key"] in current)
    report.runs = sorted({mf.run_id_of(k) for k in files})
    held = [why for key in files if current[key].encryption_key is None and (why := sink.retention(key)) is not None]
    if held:
        raise RetainedError(f"{len(held)} data file(s) holding these results cannot be deleted: {'; '.join(held[:3])}"
                            f"{' ...' if len(held) > 3 else ''}. Nothing was changed. Forget them once the retention has "
                            "passed or the legal hold is lifted (a COMPLIANCE lock cannot be shortened)")
    report.forgotten += found
    stale = [t for t in ids if t in entries and t not in found]  # index entries naming no current file: they go too
    if dry_run or not (files or stale):
        return report
    p = rewrite.plan(sink, "forget", reason, rewrite.Drop.of_ids([*found, *stale]), files, results=report.results)
    rewrite.record(sink, p)
    done = rewrite.execute(sink, spool, p)
    report.rewrite_id, report.files_rewritten, report.files_removed = p.rewrite_id, done.files_rewritten, done.files_removed
    report.keys_destroyed = list(p.extra.get("keys_destroyed", []))
    report.results = done.results
    return report
