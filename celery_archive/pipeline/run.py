"""A run: extract -> serialize -> sink -> manifest -> verify -> purge, under the sink's lock.

Before taking anything new, a run tidies up after any earlier run that died: data files
with no manifest are removed (their results are still in the source), and committed runs
whose purge did not finish are verified and purged again. That makes a re-run after a
crash safe: nothing is lost, and nothing is archived twice.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive import __version__
from celery_archive.config import RunConfig, format_duration
from celery_archive.errors import ConfigError, VerifyError, disk_error
from celery_archive.pipeline import manifest as mf
from celery_archive.pipeline.index import COMPACT_AFTER, DeltaWriter, compact, state
from celery_archive.pipeline.metrics import write_metrics
from celery_archive.pipeline.purge import PurgeBatch, purge_verified
from celery_archive.pipeline.serialize import ArchiveWriter, iso
from celery_archive.pipeline.source import REDIS_SCHEMES, Source, Tally
from celery_archive.pipeline.verify import Verifier, discard
from celery_archive.schemas import MANIFEST_VERSION, RECORD_VERSION
from celery_archive.sinks import Sink, open_sink

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.pipeline.rules import Applied


@dataclass(frozen=True)
class RunReport:
    run_id: str
    source: str
    sink: str
    cutoff: str
    selected: int
    archived: int
    verified: int
    deleted: int
    skipped_changed: int
    files: int
    bytes: int
    delete: bool
    resumed: list[str] = field(default_factory=list)
    orphans_removed: int = 0
    seconds: float = 0.0
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    source_counts: dict[str, int] = field(default_factory=dict)  # e.g. no_ttl, not_celery, wrong_type (Redis)
    source_examples: dict[str, list[str]] = field(default_factory=dict)  # the first few records left alone, by reason
    rules: dict[str, dict[str, int]] = field(default_factory=dict)  # per rule: archived, deleted, kept, not_due
    deleted_by_rules: int = 0  # deleted without an archive (action = "delete")
    stopped_early: bool = False  # --max-runtime reached: the rest is left for the next run
    iceberg_runs: list[str] = field(default_factory=list)  # runs appended to the Iceberg table

    def to_json(self) -> dict[str, Any]:
        return {"command": "run", **asdict(self)}


@dataclass(frozen=True)
class DryRunReport:
    source: str
    cutoff: str
    selected: int
    bytes: int
    by_kind: dict[str, int]
    by_status: dict[str, int]
    by_name: dict[str, int]
    by_day: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"command": "run", "dry_run": True, **asdict(self)}


def open_source(cfg: RunConfig) -> Source:
    """The source for ``cfg.source``, picked by URL scheme, connected. Each source's client
    library is imported only when it is used (SQLAlchemy alone costs ~0.1 s of start-up)."""
    source: Source
    if cfg.source.split("://", 1)[0] in REDIS_SCHEMES:
        from celery_archive.pipeline.redis_source import RedisSource, RedisSourceConfig

        source = RedisSource(RedisSourceConfig(cfg.source, cfg.serializer, cfg.key_prefix, cfg.expiring_within,
                                               cfg.result_expires, cfg.master_name))
    elif cfg.source.startswith("django+"):
        from celery_archive.pipeline.django_source import DjangoSource

        source = DjangoSource(cfg.source, cfg.serializer)
    else:
        from celery_archive.pipeline.sql import SqlSource, SqlSourceConfig

        source = SqlSource(SqlSourceConfig(cfg.source, cfg.task_table, cfg.group_table,
                                           cfg.task_schema, cfg.group_schema, cfg.serializer))
    source.open()
    return source


def dry_run(source: Source, cutoff: dt.datetime) -> DryRunReport:
    t = Tally.of(source.stats(cutoff))
    return DryRunReport(source.display_url, iso(cutoff), t.results, t.bytes, dict(t.by_kind),
                        dict(t.by_status.most_common()), dict(t.by_name.most_common()), dict(sorted(t.by_day.items())))


class Checks:
    """A run's verification and its restore index entries, begun before its manifest exists:
    each data file is verified as soon as it is put, while extraction goes on."""

    def __init__(self, sink: Sink, run_id: str, spool: Path, cfg: RunConfig, workers: int = 1) -> None:
        self.delta = DeltaWriter(sink, run_id, spool)
        self.verifier = Verifier(sink, run_id, spool, keep=cfg.delete, on_located=self.delta.add, workers=workers)

    def abandon(self) -> None:
        self.verifier.abandon()
        self.delta.discard()


def _finish(sink: Sink, source: Source, manifest: dict[str, Any], spool: Path, cfg: RunConfig,
            checks: Checks | None = None) -> tuple[int, int, int]:
    """Verify a committed run (its files not checked yet by ``checks``), write its restore
    index entries and, if asked, purge it; writes its report. (verified, deleted, skipped)."""
    checks = checks or Checks(sink, manifest["run_id"], spool, cfg, workers=2)
    try:
        report = checks.verifier.report(manifest)
    except BaseException:
        checks.abandon()
        raise
    if report.ok:
        checks.delta.commit()  # before the purge: whatever leaves the source can be found
    else:
        checks.delta.discard()
        exc = VerifyError(f"run {manifest['run_id']} failed verification, nothing was deleted: " + "; ".join(report.problems[:5]))
        exc.problems = report.problems  # type: ignore[attr-defined]
        raise exc
    deleted = skipped = 0
    try:
        if cfg.delete:
            pr = purge_verified(source.purge, report.verified, cfg.purge_batch, source.purge_columns)
            deleted, skipped = pr.deleted, pr.skipped_changed
    finally:
        discard(report)
    mf.write_json(sink, mf.report_key(manifest["run_id"], purged=cfg.delete), {
        "run_id": manifest["run_id"], "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "verified": report.rows, "deleted": deleted, "skipped_changed": skipped, "purged": cfg.delete,
    })
    return report.rows, deleted, skipped


def _recover(sink: Sink, source: Source, spool: Path, cfg: RunConfig) -> tuple[list[str], int]:
    """Remove uncommitted data files; finish committed runs whose purge never completed."""
    committed = set(mf.committed_runs(sink))
    orphans = list(mf.orphan_files(sink, committed))
    for key in orphans:
        sink.delete(key)
    done = mf.reports(sink)
    pending = sorted(r for r in committed if r not in done or not done[r].get("purged"))
    if pending and not cfg.delete:
        raise ConfigError(
            f"{len(pending)} earlier run(s) ({', '.join(pending[:3])}) archived results that are still in the source; "
            "run once without --no-delete to purge them, or a --no-delete run would archive them twice"
        )
    for run_id in pending:
        manifest = mf.load_manifest(sink, run_id)
        if manifest["source"] != source.display_url or manifest.get("source_tables") != source.describe():
            raise ConfigError(f"run {run_id} was archived from {manifest['source']} and its purge did not finish: "
                              f"run again with --source for that backend to finish it")
        _finish(sink, source, manifest, spool, cfg)
    return pending, len(orphans)


@contextmanager
def spool_dir(root: Path | None) -> Iterator[str]:
    """A private staging directory for one run, removed after it."""
    try:
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.TemporaryDirectory(prefix="celery-archive-", dir=root)
    except OSError as exc:
        raise disk_error("creating a staging directory in", root or tempfile.gettempdir(), exc) from exc
    with tmp as path:
        yield path


Progress = Callable[[int], None]  # called with the number of results taken so far


def _extract(source: Source, cfg: RunConfig, cutoff: dt.datetime, run_id: str, now: dt.datetime,
             applied: Applied | None, progress: Progress | None, started: float) -> Iterator[pa.Table]:
    """The run's record batches: the policy applied, throttled to --max-rate, ended at a batch
    boundary once --max-runtime has passed (``StopEarly`` is then raised after the last one)."""
    taken = 0
    for cols in source.extract(cutoff, cfg.batch_size, run_id, now):
        if applied is not None:
            cols = applied.apply(cols)
        taken += cols.num_rows
        yield cols
        if progress is not None:
            progress(taken)
        elapsed = time.perf_counter() - started
        if cfg.max_rate and taken / cfg.max_rate > elapsed:
            time.sleep(taken / cfg.max_rate - elapsed)
        if cfg.max_runtime and time.perf_counter() - started >= cfg.max_runtime.total_seconds():
            raise StopEarly


class StopEarly(Exception):
    """--max-runtime reached at a batch boundary."""


def _delete_by_rules(source: Source, applied: Applied, cfg: RunConfig) -> int:
    """Purge what delete rules took (no archive, by the user's rule), only where unchanged."""
    deleted = 0
    for kind, keys in applied.deletions(cfg.purge_batch):
        deleted += source.purge(PurgeBatch.of(kind, [keys]))[0]
    return deleted


def run(cfg: RunConfig, progress: Progress | None = None) -> RunReport | DryRunReport:
    """Archive what ``cfg`` selects; returns what was selected, archived, verified, deleted.
    ``progress`` is called after each batch with the number of results taken so far."""
    cfg.check()
    started = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    cutoff = now - (cfg.policy.widest_age() if cfg.policy else cfg.older_than)
    sink = open_sink(cfg.sink)
    source = open_source(cfg)
    try:
        if cfg.dry_run:
            if cfg.policy is not None:
                raise ConfigError("--dry-run counts by one age; with [[rules]] or [hold], "
                                  "`celery-archive rules check --config ...` shows what a run would take, rule by rule")
            return dry_run(source, cutoff)
        run_id = mf.new_run_id(now)
        lock = mf.Lock(sink, run_id)
        lock.acquire()
        try:
            with spool_dir(cfg.spool_dir or sink.spool_root()) as tmp:
                spool = Path(tmp)
                resumed, orphans = _recover(sink, source, spool, cfg)
                checks = Checks(sink, run_id, spool, cfg)
                writer = ArchiveWriter(sink, run_id, cfg.format, cfg.compression, cfg.max_file_bytes, spool,
                                       on_put=checks.verifier.submit)
                applied = None
                if cfg.policy is not None:
                    from celery_archive.pipeline.rules import Applied

                    applied = Applied(cfg.policy, now, spool, source.purge_columns, cfg.expiring_within)
                selected, stopped = 0, False
                try:
                    try:
                        for cols in _extract(source, cfg, cutoff, run_id, now, applied, progress, started):
                            selected += cols.num_rows
                            writer.write(cols)
                    except StopEarly:
                        stopped = True
                    entries = writer.close()
                except BaseException:
                    writer.abort()
                    checks.abandon()
                    raise
                manifest: dict[str, Any] = {
                    "manifest_version": MANIFEST_VERSION, "schema_version": RECORD_VERSION, "run_id": run_id,
                    "created_at": iso(now), "source": source.display_url, "source_tables": source.describe(),
                    "cutoff": iso(cutoff), "older_than": format_duration(cfg.older_than), "serializer": cfg.serializer,
                    "delete": cfg.delete, "tool_version": __version__, "files": [e.to_json() for e in entries],
                    "rules": applied.counts() if applied else None,
                    "totals": {"files": len(entries), "rows": selected, "bytes": sum(e.bytes for e in entries)},
                }
                try:
                    mf.write_json(sink, mf.manifest_key(run_id), manifest)  # the commit point
                except BaseException:
                    checks.abandon()
                    raise
                verified, deleted, skipped = _finish(sink, source, manifest, spool, cfg, checks)
                by_rules = _delete_by_rules(source, applied, cfg) if applied is not None and cfg.delete else 0
                if len(state(sink).deltas) >= COMPACT_AFTER:
                    compact(sink, spool)
                iceberg: list[str] = []
                if cfg.iceberg_table:
                    from celery_archive.pipeline.iceberg import append_runs

                    iceberg = append_runs(sink, cfg.iceberg_catalog, cfg.iceberg_table)
        finally:
            lock.release()
        report = RunReport(run_id, source.display_url, sink.url, iso(cutoff), selected, sum(e.rows for e in entries),
                           verified, deleted, skipped, len(entries), manifest["totals"]["bytes"], cfg.delete,
                           resumed, orphans, round(time.perf_counter() - started, 3),
                           source_counts=dict(source.counts), source_examples=dict(source.examples), rules=applied.counts() if applied else {},
                           deleted_by_rules=by_rules, stopped_early=stopped, iceberg_runs=iceberg)
        if cfg.metrics_file:
            write_metrics(cfg.metrics_file, report)
        return report
    finally:
        source.close()
