"""`celery-archive run`: the nightly job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from celery_archive.cli.base import (
    SINK_HELP,
    _human_bytes,
    emit,
    frozen_once_started,
    handle_errors,
    json_option,
    main,
    newest_line,
    opt,
    progress_reporter,
    source_options,
    stop_on_signals,
)


@main.command()
@source_options
@opt("--sink", key="sink", metavar="URL", help=SINK_HELP)
@opt("--format", key="format", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True, help="Data file format.")
@opt("--compression", key="compression", type=click.Choice(["zstd", "gzip", "snappy", "none"]), default=None,
     help="Data file compression (default: zstd for parquet, none for jsonl).")
@opt("--max-file-size", key="max_file_size", default="128MiB", show_default=True, metavar="SIZE", help="Roll data files at this size.")
@opt("--commit-every", key="commit_every", type=click.IntRange(0), default=50_000, show_default=True, metavar="N",
     help="Commit every N results taken as a run of its own, and delete them from the backend while the rest is taken "
          "(0: commit once, at the end). Each part is verified before its delete; a run that dies loses none of them.")
@opt("--expiring-within", key="expiring_within", default=None, metavar="AGE",
     help="Redis: also take finished results whose remaining TTL is below this (archive them before Redis expires them).")
@opt("--max-rate", key="max_rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="N",
     help="Take at most N results per second (throttles the reads and so the whole run).")
@opt("--max-runtime", key="max_runtime", default=None, metavar="AGE",
     help="Stop taking new results after this long (2h), at a batch boundary; what was taken is archived, "
          "verified and purged as usual, the rest is left for the next run.")
@opt("--metrics-file", key="metrics_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
     help="Write the run's figures here in Prometheus text format (node_exporter's textfile collector).")
@opt("--iceberg-table", key="iceberg_table", default=None, metavar="NAMESPACE.TABLE",
     help="Append each run's Parquet files to this Apache Iceberg table, one snapshot a run (needs pyiceberg).")
@opt("--iceberg-catalog", key="iceberg_catalog", default="default", show_default=True, metavar="NAME",
     help="The pyiceberg catalog (configured in ~/.pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__*).")
@opt("--lease-ttl", key="lease_ttl", default="60s", show_default=True, metavar="AGE",
     help="The archive's lease goes stale after this long without renewal (the run renews it every sixth of it); "
          "a run that finds a stale-looking lease watches it this long before taking it over.")
@opt("--shards", key="shards", type=click.IntRange(1, 1024), default=None, metavar="N",
     help="Split the run into N disjoint shards run side by side (local processes; with --on-celery, Celery tasks); "
          "the run commits once, when every shard has verified, then the shards purge in parallel.")
@opt("--on-celery", key="on_celery", is_flag=True, default=None,
     help="Run the shards as Celery tasks on the app's workers (-A; workers run `-I celery_archive.tasks -Q celery_archive`), "
          "and wait for them; this process holds the lease and commits.")
@click.option("--no-wait", is_flag=True, help="With --shards or --on-celery: go on in the background, print the run's id once its "
              "shards are fixed and exit; `celery-archive runs --sink ...` shows it running, then committed.")
@opt("--queue", key="queue", default=None, metavar="NAME", help="The workers' queue for --on-celery's tasks (default: celery_archive).")
@click.option("--dry-run", is_flag=True, help="Count what would be archived (by kind, status, task name, day, bytes); change nothing.")
@opt("--no-delete", key="no_delete", is_flag=True, help="Archive and verify only; leave the results in the backend.")
@opt("--spool-dir", key="spool_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
     help="Where data files are staged before they are stored (default: .tmp-spool in a local sink, else the system temp dir).")
@json_option
@handle_errors("run", heavy=True)
def run(config: Path | None, as_json: bool, no_wait: bool, **values: Any) -> None:
    """Archive expired results, verify the archive, then delete them from the backend.

    \b
    celery-archive run --source db+postgresql+psycopg://user@host/db \\
        --sink /var/archive --older-than 30d --format parquet
    celery-archive -A proj.celery run --config archive.toml
    """
    from celery_archive.pipeline.run import DryRunReport
    from celery_archive.pipeline.run import run as run_archive
    from celery_archive.settings import run_config

    cfg = run_config(values, click.get_current_context().meta.get("celery_archive.file"))
    if no_wait:
        _in_background(cfg, as_json)
        return
    announce = os.environ.pop(_ANNOUNCE, None)

    def on_start(run_id: str) -> None:
        if announce:
            Path(announce).write_text(run_id)

    with progress_reporter(as_json) as show, stop_on_signals() as stop, frozen_once_started() as started:

        def progress(n: int) -> None:
            started()
            show(n)

        report = run_archive(cfg, progress=progress, stop=stop, on_wait=lambda msg: click.echo(f"celery-archive: {msg}", err=True),
                             warn=lambda note: click.echo(f"warning: {note}", err=True), runner=_runner(cfg), on_start=on_start)
    if as_json:
        emit(report.to_json())
        return
    if isinstance(report, DryRunReport):
        click.echo(f"dry run: {report.selected:,} results older than {report.cutoff} would be archived "
                   f"({_human_bytes(report.bytes)} stored) from {report.source}")
        for title, counts in (("by status", report.by_status), ("by task name", report.by_name), ("by day", report.by_day)):
            click.echo(f"  {title}: " + ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:12]))
        click.echo(newest_line(report.newest, report.now, "would be taken"))
        _left_alone(report.source_counts, report.source_examples, "would be")
        click.echo("nothing was changed; run again without --dry-run to archive")
        return
    if report.resumed or report.orphans_removed:
        click.echo(f"finished {len(report.resumed)} interrupted run(s), removed {report.orphans_removed} file(s) of runs that never committed")
    if report.shards:
        click.echo(f"run {report.run_id} in {len(report.shards)} shard(s) ({report.ran_on}): "
                   + ", ".join(f"#{s['shard']} {s['archived']:,}" for s in report.shards))
    click.echo(f"run {report.run_id}: archived {report.archived:,} of {report.selected:,} results older than "
               f"{report.cutoff} in {report.files} file(s), {_human_bytes(report.bytes)}, to {report.sink}")
    _left_alone(report.source_counts, report.source_examples)
    click.echo(f"verified {report.verified:,}; deleted {report.deleted:,} from the backend"
               + (f"; kept {report.skipped_changed:,} that changed since they were read" if report.skipped_changed else "")
               + (f"; deleted {report.deleted_by_rules:,} without an archive (delete rules)" if report.deleted_by_rules else "")
               + ("" if report.delete else " (--no-delete)"))
    for rule, c in report.rules.items():
        click.echo(f"  rule {rule}: archived {c['archived']:,}, deleted without archive {c['deleted']:,}, "
                   f"kept {c['kept']:,}, not yet due {c['not_due']:,}")
    if report.stopped_early:
        click.echo(("stopped at --max-runtime" if report.stopped_by == "max_runtime" else "stopped by a signal")
                   + "; the next run takes the rest")
    if report.manifests_restored:
        click.echo(f"wrote the manifests of {len(report.manifests_restored)} committed run(s) again from their commit records: "
                   + ", ".join(report.manifests_restored[:5]))
    if report.lost_manifests:
        click.echo(f"warning: {len(report.lost_manifests)} run(s) have data files but no manifest ({', '.join(report.lost_manifests[:5])}); "
                   f"they are kept: `celery-archive manifest rebuild --sink {report.sink}` makes their manifests again", err=True)


_ANNOUNCE = "CELERY_ARCHIVE_ANNOUNCE_RUN"  # where a --no-wait run's background process writes its id


def _in_background(cfg: Any, as_json: bool) -> None:
    """The same command without --no-wait, in a session of its own (its output to a log file);
    returns once it says its run id, or fails with its log if it ended first."""
    import subprocess
    import sys
    import tempfile
    import time

    from celery_archive.errors import ArchiveError, ConfigError

    if cfg.shards <= 1 and not cfg.on_celery:
        raise ConfigError("--no-wait goes with --shards N or --on-celery (a run in shards); without them, run it in the background yourself")
    fd, log = tempfile.mkstemp(prefix="celery-archive-run-", suffix=".log")
    announce = Path(log).with_suffix(".id")
    argv = [sys.executable, "-m", "celery_archive.cli", *[a for a in sys.argv[1:] if a != "--no-wait"]]
    proc = subprocess.Popen(argv, stdout=fd, stderr=fd, stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, _ANNOUNCE: str(announce)})
    os.close(fd)
    while not announce.exists() or not announce.read_text():
        if proc.poll() is not None:
            raise ArchiveError(f"the run ended before it started its shards (exit {proc.returncode}): {Path(log).read_text()[-2000:]}")
        time.sleep(0.1)
    run_id = announce.read_text()
    announce.unlink()
    if as_json:
        emit({"command": "run", "run_id": run_id, "waiting": False, "pid": proc.pid, "log": log, "sink": cfg.sink})
        return
    click.echo(f"run {run_id} goes on in the background (pid {proc.pid}, log {log}); "
               f"`celery-archive runs --sink {cfg.sink}` shows it running, then committed")


def _runner(cfg: Any) -> Any:
    """Celery's workers for --on-celery (the -A app's), else None (local processes, if --shards)."""
    if not cfg.on_celery or cfg.dry_run:
        return None
    from celery_archive.errors import ConfigError
    from celery_archive.pipeline.sharded import CeleryRunner
    from celery_archive.settings import load_app

    spec = click.get_current_context().find_root().params.get("app")
    if not spec:
        raise ConfigError("--on-celery sends the shards to the app's workers: give the app with -A (celery-archive -A proj run ...)")
    return CeleryRunner(load_app(spec), cfg.queue)


def _left_alone(counts: dict[str, int], examples: dict[str, list[str]], were: str = "were") -> None:
    """Notes on what the source held but a run left where it was, naming the first few."""
    from celery_archive.backends.codec import MAX_INFLATED
    from celery_archive.backends.redis.source import LEFT_ALONE

    if counts.get("no_task_id") or counts.get("bad_date_done"):
        shown = [e for reason in ("no_task_id", "bad_date_done") for e in examples.get(reason, [])]
        click.echo(f"note: {counts.get('no_task_id', 0):,} row(s) have no task id and {counts.get('bad_date_done', 0):,} a "
                   f"date_done that cannot be read; they {were} left in the backend (source_counts in --json)"
                   + (f"; first: {', '.join(shown)}" if shown else ""))
        examples = {k: v for k, v in examples.items() if k not in ("no_task_id", "bad_date_done")}
    if counts.get("no_ttl"):
        click.echo(f"note: {counts['no_ttl']:,} result key(s) have no TTL (they never expire by themselves)")
    if counts.get("not_inflated"):
        click.echo(f"note: {counts['not_inflated']:,} result(s) would inflate beyond {MAX_INFLATED // 1024**2} MiB (result_compression): "
                   "archived as stored, status unknown, dated from their TTL, with no queryable copy (see decode_error)")
    alone = [(reason, n) for reason, n in counts.items() if n and (reason in LEFT_ALONE or reason in examples)]
    for reason, n in alone:
        shown = examples.get(reason, [])
        click.echo(f"note: left alone {n:,} record(s) that {LEFT_ALONE.get(reason, reason)} [{reason}]"
                   + (f"; first: {', '.join(shown)}" if shown else ""))
    if alone:
        click.echo("  they are never archived or deleted: look at them in the backend (Redis: redis-cli TYPE / GET the key), "
                   "then fix or remove them")


