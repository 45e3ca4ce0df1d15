"""A run: extract -> serialize -> sink -> commit -> verify -> purge, under the archive's lease
(lease.py: every change to the archive and every purge batch is fenced by it) and the
backend's archiver lock (backends/lock.py: one archiver per backend).

Before taking anything new, a run settles every earlier run that died (recover.py): files of
runs that never committed are removed once their abandonment is decided, committed runs whose
purge did not finish are verified and purged again. That makes a re-run after a crash safe:
nothing is lost, and nothing is archived twice.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.archive import audit
from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import KEYS
from celery_archive.backends import REDIS_SCHEMES, PurgeBatch, Source, Tally, open_source
from celery_archive.backends import lock as source_lock
from celery_archive.config import RunConfig
from celery_archive.errors import ConfigError
from celery_archive.index.packs import COMPACT_AFTER, compact, state
from celery_archive.pipeline.commit import Checks, finish
from celery_archive.pipeline.extract import Progress, batches
from celery_archive.pipeline.lease import FencedSink, Lease
from celery_archive.pipeline.metrics import write_metrics
from celery_archive.pipeline.recover import recover
from celery_archive.pipeline.write import write_and_commit
from celery_archive.sinks import open_sink
from celery_archive.spool import spool_dir
from celery_archive.times import iso

if TYPE_CHECKING:
    from celery_archive.pipeline.rules import Applied
    from celery_archive.pipeline.sharded import Runner


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
    stopped_early: bool = False  # --max-runtime reached, or a SIGTERM/SIGINT: the rest is left for the next run
    stopped_by: str | None = None  # max_runtime | signal
    manifests_restored: list[str] = field(default_factory=list)  # rewritten from their runs' commit records
    lost_manifests: list[str] = field(default_factory=list)  # runs kept though no manifest names them: `manifest rebuild`
    rewrites_finished: list[str] = field(default_factory=list)  # forget/prune plans a crash left, finished first
    swept: int = 0  # left-overs of dead runs removed (partial objects, staging directories)
    iceberg_runs: list[str] = field(default_factory=list)  # runs appended to the Iceberg table
    dates: dict[str, Any] = field(default_factory=dict)  # per kind: how stored date_done became UTC
    warnings: list[str] = field(default_factory=list)  # doubts about the dates, said before any delete
    shards: list[dict[str, Any]] = field(default_factory=list)  # a sharded run: each shard's ranges and counts
    ran_on: str | None = None  # a sharded run: local (processes) or celery (workers)
    parts: list[str] = field(default_factory=list)  # a run committed in parts (--commit-every): each part's run id

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
    now: str = ""
    newest: dict[str, str] | None = None  # the newest result it would take: task_id, stored, utc
    dates: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source_counts: dict[str, int] = field(default_factory=dict)  # as a run's: what it would leave alone, and why
    source_examples: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"command": "run", "dry_run": True, **asdict(self)}


def newest_json(newest: tuple[str, str, dt.datetime] | None) -> dict[str, str] | None:
    """The newest result a selection takes: its id, date_done as stored, and as UTC."""
    return None if newest is None else {"task_id": newest[0], "stored": newest[1], "utc": iso(newest[2])}


def date_notes(source: Source) -> list[str]:
    """The source's doubts about its dates, with wall times of a repeated hour counted."""
    notes = list(source.warnings)
    n = source.counts.get("date_done_ambiguous", 0)
    if n:
        notes.append(f"{n} date_done value(s) are wall times of an hour repeated when the clocks went back: each could be "
                     "either of two instants an hour apart, and was read as the later (as PostgreSQL reads them)")
    return notes


def dry_run(source: Source, cutoff: dt.datetime, now: dt.datetime) -> DryRunReport:
    t = Tally.of(source.stats(cutoff))
    return DryRunReport(source.display_url, iso(cutoff), t.results, t.bytes, dict(t.by_kind),
                        dict(t.by_status.most_common()), dict(t.by_name.most_common()), dict(sorted(t.by_day.items())),
                        iso(now), newest_json(source.newest(cutoff)), source.describe_dates(), date_notes(source),
                        dict(source.counts), {k: list(v) for k, v in source.examples.items()})


Warn = Callable[[str], None]  # called with what the run doubts, before it deletes anything


def _delete_by_rules(source: Source, applied: Applied, cfg: RunConfig, fence: Callable[[], None]) -> int:
    """Purge what delete rules took (no archive, by the user's rule), only where unchanged."""
    deleted = 0
    for kind, keys in applied.deletions(cfg.purge_batch):
        fence()
        deleted += source.purge(PurgeBatch.of(kind, [keys]))[0]
    return deleted


def run(cfg: RunConfig, progress: Progress | None = None, stop: threading.Event | None = None,
        on_wait: Callable[[str], None] | None = None, warn: Warn | None = None,
        now: dt.datetime | None = None, runner: Runner | None = None,
        on_start: Callable[[str], None] | None = None) -> RunReport | DryRunReport:
    """Archive what ``cfg`` selects; returns what was selected, archived, verified, deleted.
    ``progress`` is called after each batch with the number of results taken so far; once
    ``stop`` is set the run takes nothing more and finishes what it took (a safe stop);
    ``on_wait`` hears why the run waits (a held lease being watched); ``warn`` each doubt
    about the stored dates, before anything is taken or deleted. ``now`` is the instant the
    run counts ages from (aware, or naive UTC; default: the system clock's), so tests and
    replays select by a known clock instead of waiting for one. With ``cfg.shards`` > 1 or a
    ``runner`` (Celery's workers) the run goes in shards (sharded.py); ``on_start`` then hears
    the run's id once its shards are fixed."""
    cfg.check()
    started = time.perf_counter()
    if now is None:
        now = dt.datetime.now(dt.timezone.utc)
    now = now.astimezone(dt.timezone.utc).replace(tzinfo=None) if now.tzinfo else now
    cutoff = now - (cfg.policy.widest_age() if cfg.policy else cfg.older_than)
    archive = open_sink(cfg.sink)
    source = open_source(cfg)
    try:
        for note in source.warnings:
            if warn is not None:
                warn(note)
        if cfg.dry_run:
            if cfg.policy is not None:
                raise ConfigError("--dry-run counts by one age; with [[rules]] or [hold], "
                                  "`celery-archive rules check --config ...` shows what a run would take, rule by rule")
            return dry_run(source, cutoff, now)
        if archive.encryption is None and next(iter(archive.list(KEYS)), None) is not None:
            raise ConfigError(f"{archive.url} holds encrypted runs (their data keys are under {KEYS}): give the sink URL with its "
                              "encrypt= option (encrypt=keyfile:PATH or encrypt=kms:KEY); without it this run would write its "
                              "results in clear beside them")
        run_id = mf.new_run_id(now)
        lease = Lease(archive, run_id, cfg.lease_ttl, on_wait=on_wait)
        with lease.holding():
            fenced = FencedSink(archive, lease)
            swept = fenced.sweep(2 * cfg.lease_ttl)  # before this run's own staging directory exists
            redis = source.client if cfg.source.split("://", 1)[0] in REDIS_SCHEMES else None  # type: ignore[attr-defined]
            tables = ",".join(f"{k}={v}" for k, v in sorted(source.describe().items()))
            with source_lock.held(cfg.source, tables, {"run_id": run_id, "sink": archive.url}, redis, cfg.lease_ttl) as locked, \
                    spool_dir(cfg.spool_dir or archive.spool_root()) as tmp:
                lease.also.append(locked)  # a Redis lock expires while a run is paused: fenced as the lease is
                if runner is None and cfg.shards > 1:
                    from celery_archive.pipeline.sharded import LocalRunner

                    runner = LocalRunner(cfg.shards, stop)
                report = _locked_run(fenced, lease, source, cfg, run_id, now, cutoff, Path(tmp), progress, stop, started, swept,
                                     runner, on_start)
        if cfg.metrics_file:
            write_metrics(cfg.metrics_file, report)
        return report
    finally:
        source.close()


def in_parts(cfg: RunConfig, source: Source) -> bool:
    """Whether the run commits every --commit-every results and purges them while it takes the
    rest (parts.py): not with rules (they count the whole run), nor with --no-delete (nothing to
    overlap), nor on a backend whose purge cannot run beside its reads."""
    return bool(cfg.commit_every) and cfg.delete and cfg.policy is None and source.purge_alongside


def _locked_run(sink: FencedSink, lease: Lease, source: Source, cfg: RunConfig, run_id: str, now: dt.datetime,
                cutoff: dt.datetime, spool: Path, progress: Progress | None, stop: threading.Event | None,
                started: float, swept: int, runner: Runner | None, on_start: Callable[[str], None] | None) -> RunReport:
    """The run proper, with the lease held: recover, extract and write, commit, finish."""
    if runner is not None:
        from celery_archive.pipeline.sharded import check

        check(cfg)  # before anything is changed
    recovered = recover(sink, source, spool, cfg, run_id, lease.check)
    applied = None
    parts: list[str] = []  # a run in parts: every part's run id (the first is run_id)
    shards: list[dict[str, Any]] = []
    shard_counts: dict[str, int] = {}  # counted by the shards (elsewhere): this process's source took nothing
    if runner is not None:
        from celery_archive.pipeline.sharded import sharded_run

        done = sharded_run(sink, lease, source, cfg, run_id, now, cutoff, runner, on_start)
        manifest, selected, stopped_by, shards = done.manifest, done.selected, done.stopped_by, done.shards
        entries, shard_counts = list(manifest.files), done.counts
        verified, deleted, skipped = done.verified, done.deleted, done.skipped
    elif in_parts(cfg, source):
        from celery_archive.pipeline.parts import run_in_parts

        parted = run_in_parts(sink, lease, source, cfg, run_id, now, cutoff, spool,
                              batches(source, cfg, cutoff, run_id, now, None, progress, started, stop))
        entries, selected, stopped_by, parts = parted.entries, parted.selected, parted.stopped_by, parted.ids
        verified, deleted, skipped = parted.verified, parted.deleted, parted.skipped
    else:
        checks = Checks(sink, run_id, spool, cfg)
        if cfg.policy is not None:
            from celery_archive.pipeline.rules import Applied

            applied = Applied(cfg.policy, now, spool, source.purge_columns, cfg.expiring_within)
        written = write_and_commit(sink, source, cfg, run_id, now, cutoff, spool, checks, batches(
            source, cfg, cutoff, run_id, now, applied, progress, started, stop), applied, lease.check)
        manifest, entries, selected, stopped_by = written.manifest, written.entries, written.selected, written.stopped_by
        verified, deleted, skipped = finish(sink, source, manifest, spool, cfg, checks, fence=lease.check)
    by_rules = _delete_by_rules(source, applied, cfg, lease.check) if applied is not None and cfg.delete else 0
    if by_rules:  # deleted from the backend by a delete rule, without an archive: the audit log says so
        audit.record(sink, "purge", run_id=run_id, deleted_by_rules=by_rules, archived=False)
    if len(state(sink).deltas) >= COMPACT_AFTER:
        compact(sink, spool)
    iceberg: list[str] = []
    if cfg.iceberg_table:
        from celery_archive.warehouse.iceberg import append_runs

        iceberg = append_runs(sink.inner, cfg.iceberg_catalog, cfg.iceberg_table)  # reads the archive; writes the catalog
    return RunReport(run_id, source.display_url, sink.url, iso(cutoff), selected, sum(e.rows for e in entries),
                     verified, deleted, skipped, len(entries), sum(e.bytes for e in entries), cfg.delete,
                     recovered.resumed, recovered.orphans_removed, round(time.perf_counter() - started, 3),
                     source_counts={**source.counts, **shard_counts}, source_examples=dict(source.examples),
                     rules=applied.counts() if applied else {},
                     deleted_by_rules=by_rules, stopped_early=stopped_by is not None, stopped_by=stopped_by,
                     iceberg_runs=iceberg, manifests_restored=recovered.restored, lost_manifests=recovered.lost,
                     rewrites_finished=recovered.rewrites,
                     swept=swept, dates=source.describe_dates(), warnings=date_notes(source) + recovered.damaged,
                     shards=shards, ran_on=runner.where if runner is not None else None, parts=parts if len(parts) > 1 else [])
