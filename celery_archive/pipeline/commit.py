"""Commit and finish a run: the manifest, the commit decision, then for a committed run its
verification, restore index entries, purge and report (also what recovery runs for a run that
died after its commit)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from celery_archive.archive import audit
from celery_archive.archive import manifest as mf
from celery_archive.archive.manifest import FileEntry, Manifest, RunRecord, Totals
from celery_archive.config import RunConfig, format_duration
from celery_archive.errors import ObjectNotFoundError, VerifyError
from celery_archive.index.packs import DeltaWriter, indexed_files
from celery_archive.pipeline.purge import purge_verified
from celery_archive.pipeline.verify import Verifier, VerifyReport, discard
from celery_archive.schemas import MANIFEST_VERSION, RECORD_VERSION
from celery_archive.times import iso
from celery_archive.version import __version__

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.backends import Source
    from celery_archive.sinks import Sink


class Checks:
    """A run's verification and its restore index entries, begun before its manifest exists:
    each data file is verified as soon as it is put, while extraction goes on."""

    def __init__(self, sink: Sink, run_id: str, spool: Path, cfg: RunConfig, workers: int = 1,
                 part: str | None = None, indexed: set[str] | None = None) -> None:
        self.delta = DeltaWriter(sink, run_id, spool, part)
        self.indexed = indexed or set()  # files whose entries the index holds already: not added again
        self.verifier = Verifier(sink, run_id, spool, keep=cfg.delete, on_located=self._located, workers=workers)

    def _located(self, table: pa.Table) -> None:
        if not self.indexed or table.num_rows == 0 or table["key"][0].as_py() not in self.indexed:
            self.delta.add(table)

    def abandon(self) -> None:
        self.verifier.abandon()
        self.delta.discard()


def manifest_of(run_id: str, now: dt.datetime, cutoff: dt.datetime, source: Source, cfg: RunConfig,
                entries: list[FileEntry], selected: int, rules: dict[str, dict[str, int]] | None) -> Manifest:
    return Manifest(run_id=run_id, created_at=iso(now), source=source.display_url, source_tables=source.describe(),
                    cutoff=iso(cutoff), older_than=format_duration(cfg.older_than), serializer=cfg.serializer,
                    delete=cfg.delete, tool_version=__version__, files=tuple(entries), totals=Totals.of(entries, selected),
                    rules=rules, manifest_version=MANIFEST_VERSION, schema_version=RECORD_VERSION)


def _still_stored(sink: Sink, report: VerifyReport) -> list[str]:
    """Files verified early that are no longer stored as verified (removed or replaced by hand
    since): checked again right before the purge, one stat each."""
    problems = []
    for v in report.verified:
        try:
            size = sink.stat(v.entry.key).size
        except ObjectNotFoundError:
            problems.append(f"{v.entry.key}: verified, then removed from the archive before the purge")
            continue
        if size != v.entry.bytes:
            problems.append(f"{v.entry.key}: verified, then changed in the archive before the purge ({size} bytes)")
    return problems


def finish(sink: Sink, source: Source, manifest: Manifest, spool: Path, cfg: RunConfig,
           checks: Checks | None = None, fence: Callable[[], None] | None = None, part: str | None = None) -> tuple[int, int, int]:
    """Verify a committed run (its files not checked yet by ``checks``), write its restore
    index entries and, if asked, purge it (``fence`` before each batch); writes its report.
    With ``part`` (a shard: ``manifest`` then lists its files only) the index entries go to that
    part's log file and the run's report is left to the run. (verified, deleted, skipped)."""
    if checks is None:
        indexed = indexed_files(sink, manifest.run_id)  # parts (shards) of it finished before an interruption
        resumed = None if part is not None or not indexed else f"r{len(indexed)}"
        checks = Checks(sink, manifest.run_id, spool, cfg, workers=2, part=part or resumed, indexed=indexed)
    try:
        report = checks.verifier.report(manifest)
    except BaseException:
        checks.abandon()
        raise
    if report.ok and cfg.delete:
        report.problems += _still_stored(sink, report)
    if not report.ok:
        discard(report)
        checks.delta.discard()
        exc = VerifyError(f"run {manifest.run_id} failed verification, nothing was deleted: " + "; ".join(report.problems[:5]))
        exc.problems = report.problems  # type: ignore[attr-defined]
        raise exc
    checks.delta.commit()  # before the purge: whatever leaves the source can be found
    deleted = skipped = 0
    try:
        if cfg.delete:
            rows = min(cfg.purge_batch, source.purge_rows or cfg.purge_batch)
            pr = purge_verified(source.purge, report.verified, rows, source.purge_columns, before_each=fence)
            deleted, skipped = pr.deleted, pr.skipped_changed
    finally:
        discard(report)
    if part is None:
        record_purge(sink, manifest, cfg, report.rows, deleted, skipped)
    return report.rows, deleted, skipped


def record_commit(sink: Sink, manifest: Manifest, sha: str, selected: int, cfg: RunConfig, **more: object) -> None:
    """The audit event of a run's commit (``manifest``, stored with ``sha``)."""
    audit.record(sink, "run", run_id=manifest.run_id, manifest_sha256=sha, chain_seq=(manifest.chain or {}).get("seq"),
                 files=len(manifest.files), results=sum(e.rows for e in manifest.files), bytes=manifest.totals.bytes, selected=selected,
                 source=manifest.source, delete=cfg.delete, **more)


def record_purge(sink: Sink, manifest: Manifest, cfg: RunConfig, verified: int, deleted: int, skipped: int) -> None:
    """A finished run's report (``runs/<id>.json``) and, when it deleted, its purge's audit event."""
    mf.write_report(sink, RunRecord(manifest.run_id, dt.datetime.now(dt.timezone.utc).isoformat(), verified, deleted,
                                    skipped, cfg.delete))
    if cfg.delete:
        audit.record(sink, "purge", run_id=manifest.run_id, manifest_sha256=mf.manifest_sha256(manifest), verified=verified,
                     deleted=deleted, skipped_changed=skipped)
