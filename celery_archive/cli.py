"""The ``celery-archive`` command. Stages never print; this module does.

Exit codes: 0 done; 1 failed (source, sink or other error); 2 bad usage or configuration;
3 verification failed and nothing was deleted; 4 another run holds the archive's lease (or the
backend's archiver lock), or this run lost the lease; 5 a task id asked for is not in the
archive; 6 a result to restore is already in the backend (--on-conflict fail) and nothing was
restored; 7 stats --warn-above exceeded; 130 stopped at once by a second SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from celery_archive import __version__
from celery_archive.errors import ArchiveError

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on one line instead of text.")
SINK_HELP = "Archive location: a directory path, file:///path or s3://bucket/prefix[?options] (see the README)."
sink_option = click.option("--sink", required=True, metavar="URL", envvar="CELERY_ARCHIVE_SINK", show_envvar=True, help=SINK_HELP)


def emit(obj: dict[str, Any]) -> None:
    click.echo(orjson.dumps(obj).decode())


INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


def fail(command: str, error: str, error_type: str, code: int, as_json: bool, problems: list[str]) -> NoReturn:
    if as_json:
        emit({"command": command, "ok": False, "error": error, "error_type": error_type, "exit_code": code, "problems": problems})
    else:
        click.echo(f"error: {error}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT ask for a safe stop (the event is set: a run takes nothing more and
    finishes what it took, releasing the lease); a second one stops at once."""
    import signal

    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(f"celery-archive: {signal.Signals(signum).name}: stopping at the next batch boundary "
                   "(what was taken is archived, verified and purged; send it again to stop at once)", err=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def handle_errors(command: str) -> Callable[[F], F]:
    """Turn an ArchiveError into a clear message (or a JSON object) and its exit code."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ArchiveError as exc:
                fail(command, str(exc), type(exc).__name__, exc.exit_code, kwargs.get("as_json", False), getattr(exc, "problems", []))
            except KeyboardInterrupt:
                fail(command, "stopped at once (a second SIGINT/SIGTERM): nothing unverified was deleted from the backend; "
                     "the next run finishes or cleans up what this one left", "Interrupted", INTERRUPTED, kwargs.get("as_json", False), [])

        return inner  # type: ignore[return-value]

    return wrap


@contextlib.contextmanager
def progress_reporter(as_json: bool) -> Iterator[Callable[[int], None]]:
    """Progress of a long run on stderr: a live counter on a terminal, a log line every 10 s
    (CELERY_ARCHIVE_PROGRESS_EVERY) otherwise (cron, systemd, CI logs)."""
    import os

    every = float(os.environ.get("CELERY_ARCHIVE_PROGRESS_EVERY", "10"))
    started = last = time.monotonic()
    if sys.stderr.isatty() and not as_json:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("taking results", total=None)

            def show(n: int) -> None:
                rate = n / max(time.monotonic() - started, 1e-9)
                bar.update(task, description=f"{n:,} results taken ({rate:,.0f}/s)")

            yield show
        return

    def log(n: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every:
            last = now
            click.echo(f"celery-archive: {n:,} results taken in {now - started:,.0f} s ({n / (now - started):,.0f}/s)", err=True)

    yield log


def newest_line(newest: dict[str, str] | None, now: str, what: str) -> str:
    """The newest result a selection takes, its date_done as stored and as read, beside now:
    a cutoff read in the wrong zone shows here before anything is deleted."""
    if newest is None:
        return f"  newest that {what}: none (now {now})"
    import datetime as dt

    age = dt.datetime.fromisoformat(now.replace("Z", "+00:00")) - dt.datetime.fromisoformat(newest["utc"].replace("Z", "+00:00"))
    mins = int(age.total_seconds() // 60)
    return (f"  newest that {what}: task {newest['task_id']}, date_done stored {newest['stored']!r}, read as "
            f"{newest['utc']} ({mins // 60}h {mins % 60:02d}m before now, {now})")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="celery-archive")
@click.option("-A", "--app", default=None, envvar="CELERY_ARCHIVE_APP", show_envvar=True, metavar="MODULE[:ATTR]",
              help="A Celery app, as for `celery -A`: its result_backend, result_expires, table names, transport "
                   "options and serializer become the defaults of run, stats and rules check.")
@click.pass_context
def main(ctx: click.Context, app: str | None) -> None:
    """Archive Celery task results before cleanup deletes them, verify the archive,
    and purge from the result backend only what was verified."""
    if ctx.invoked_subcommand != "run":
        startup_over()  # a run says so once its first batch is in


def opt(*decls: str, key: str, **kw: Any) -> Callable[[F], F]:
    """An option that the environment (CELERY_ARCHIVE_<KEY>) and the --config file can set too."""
    from celery_archive.settings import envvar

    return click.option(*decls, envvar=envvar(key), show_envvar=True, **kw)


def _load_settings(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager: the -A app's settings and the --config file become the defaults of the other
    options (click then applies, strongest first: flags, environment, these, built-ins)."""
    from celery_archive.settings import default_map

    try:
        defaults, data = default_map(ctx.find_root().params.get("app"), value)
    except ArchiveError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["celery_archive.file"] = data
    return value


config_option = click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, is_eager=True,
                             envvar="CELERY_ARCHIVE_CONFIG", show_envvar=True, callback=_load_settings, expose_value=True,
                             help="TOML file with settings, [[rules]] and [hold] (see the README).")
source_option = opt("--source", key="source", metavar="URL",
                    help="The app's result_backend URL: db+postgresql+psycopg://user@host/db, db+sqlite:///results.db, "
                         "redis://:pw@host:6379/0; for django-celery-results, django+ and the Django database's URL: "
                         "django+postgresql+psycopg://user@host/db. Default: -A's result_backend.")


def source_options(f: F) -> F:
    """The options that say where results are and how the app stores them: run, stats, rules check."""
    for decorator in reversed([
        config_option, source_option,
        opt("--older-than", key="older_than", metavar="AGE",
            help="Take finished results whose date_done is older than this: 30d, 12h, 90m (default: -A's result_expires; "
                 "stats: --result-expires). "
                 "With [[rules]], the age of results no rule matches."),
        opt("--serializer", key="serializer", type=click.Choice(["json", "pickle", "msgpack", "yaml"]), default="json", show_default=True,
            help="The app's result_serializer, used to decode the queryable copy."),
        opt("--task-table", key="task_table", default="celery_taskmeta", show_default=True, metavar="[SCHEMA.]NAME",
            help="Task result table (database_table_names / database_table_schemas)."),
        opt("--group-table", key="group_table", default="celery_tasksetmeta", show_default=True, metavar="[SCHEMA.]NAME",
            help="Group result table."),
        opt("--key-prefix", key="key_prefix", default="", metavar="PREFIX", help="Redis: result_backend_transport_options['global_keyprefix']."),
        opt("--result-expires", key="result_expires", default="1d", show_default=True, metavar="AGE",
            help="Redis: the app's result_expires; dates saved groups, which Celery stores without a date."),
        opt("--master-name", key="master_name", default=None, help="Redis sentinel:// sources: the master's name (transport option master_name)."),
        opt("--timezone", key="timezone", default=None, metavar="ZONE",
            help="The app's time zone (its timezone setting; UTC if it has none and enable_utc; local for this machine's): "
                 "Celery >= 5.5 stores date_done in it on SQLite and MySQL. Default: -A's; without either, UTC is assumed."),
        opt("--celery-version", key="celery_version", default=None, metavar="X.Y",
            help="The Celery version of the workers that wrote the results (it decides how date_done was stored). "
                 "Default: the installed Celery's, which -A loads the app with."),
        opt("--batch-size", key="batch_size", type=click.IntRange(1), default=10_000, show_default=True, help="Results read per query."),
    ]):
        f = decorator(f)
    return f


@main.command()
@source_options
@opt("--sink", key="sink", metavar="URL", help=SINK_HELP)
@opt("--format", key="format", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True, help="Data file format.")
@opt("--compression", key="compression", type=click.Choice(["zstd", "gzip", "snappy", "none"]), default=None,
     help="Data file compression (default: zstd for parquet, none for jsonl).")
@opt("--max-file-size", key="max_file_size", default="128MiB", show_default=True, metavar="SIZE", help="Roll data files at this size.")
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
@click.option("--dry-run", is_flag=True, help="Count what would be archived (by kind, status, task name, day, bytes); change nothing.")
@opt("--no-delete", key="no_delete", is_flag=True, help="Archive and verify only; leave the results in the backend.")
@opt("--spool-dir", key="spool_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
     help="Where data files are staged before they are stored (default: .tmp-spool in a local sink, else the system temp dir).")
@json_option
@handle_errors("run")
def run(config: Path | None, as_json: bool, **values: Any) -> None:
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
    with progress_reporter(as_json) as show, stop_on_signals() as stop:

        def progress(n: int) -> None:
            startup_over()  # every library the run needs is in by its first batch
            show(n)

        report = run_archive(cfg, progress=progress, stop=stop, on_wait=lambda msg: click.echo(f"celery-archive: {msg}", err=True),
                             warn=lambda note: click.echo(f"warning: {note}", err=True))
    if as_json:
        emit(report.to_json())
        return
    if isinstance(report, DryRunReport):
        click.echo(f"dry run: {report.selected:,} results older than {report.cutoff} would be archived "
                   f"({_human_bytes(report.bytes)} stored) from {report.source}")
        for title, counts in (("by status", report.by_status), ("by task name", report.by_name), ("by day", report.by_day)):
            click.echo(f"  {title}: " + ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:12]))
        click.echo(newest_line(report.newest, report.now, "would be taken"))
        click.echo("nothing was changed; run again without --dry-run to archive")
        return
    if report.resumed or report.orphans_removed:
        click.echo(f"finished {len(report.resumed)} interrupted run(s), removed {report.orphans_removed} file(s) of runs that never committed")
    click.echo(f"run {report.run_id}: archived {report.archived:,} of {report.selected:,} results older than "
               f"{report.cutoff} in {report.files} file(s), {_human_bytes(report.bytes)}, to {report.sink}")
    counts = report.source_counts
    if counts.get("no_task_id") or counts.get("bad_date_done"):
        click.echo(f"note: {counts.get('no_task_id', 0):,} row(s) have no task id and {counts.get('bad_date_done', 0):,} a "
                   "date_done that cannot be read; they were left in the backend (source_counts in --json)")
    _left_alone(counts, report.source_examples)
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


def _left_alone(counts: dict[str, int], examples: dict[str, list[str]]) -> None:
    """Notes on what the source held but a run left where it was, naming the first few."""
    from celery_archive.pipeline.decode import MAX_INFLATED
    from celery_archive.pipeline.redis_source import LEFT_ALONE

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


@main.command()
@sink_option
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Verify only this run.")
@json_option
@handle_errors("verify")
def verify(sink: str, run_id: str | None, as_json: bool) -> None:
    """Read every archived file back and check size, sha256, rows and task ids.

    \b
    celery-archive verify --sink /var/archive
    """
    from celery_archive.pipeline.catalog import verify_archive

    report = verify_archive(sink, run_id)
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.runs} run(s), {report.files} file(s), {report.rows:,} results checked in {report.sink}")
        for p in report.problems:
            click.echo(f"  problem: {p}")
        if report.uncommitted:
            click.echo(f"  {len(report.uncommitted)} file(s) of a run that has not committed (going on now, or interrupted: the next `run` removes those)")
    if not report.ok:
        sys.exit(3)


@main.command()
@sink_option
@json_option
@handle_errors("runs")
def runs(sink: str, as_json: bool) -> None:
    """List the archive's committed runs, oldest first.

    \b
    celery-archive runs --sink /var/archive
    """
    from celery_archive.pipeline.catalog import list_runs

    infos = list_runs(sink)
    if as_json:
        emit({"command": "runs", "sink": sink, "runs": [i.to_json() for i in infos]})
        return
    if not infos:
        click.echo(f"no committed runs in {sink}; `celery-archive run --sink {sink} ...` makes one")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "created", "cutoff", "files", "results", "bytes", "state", "deleted")
    for i in infos:
        table.add_row(i.run_id, i.created_at, i.cutoff, str(i.files), f"{i.rows:,}", _human_bytes(i.bytes), i.state,
                      "" if i.deleted is None else f"{i.deleted:,}")
    Console(width=160).print(table)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("celery-archive-demo"),
              show_default=True, help="Where the demo's SQLite backend and archive go (made anew).")
@json_option
@handle_errors("demo")
def demo(directory: Path, as_json: bool) -> None:
    """Fill a SQLite result backend with Celery's own backend code, archive it, verify, query.

    \b
    celery-archive demo
    """
    from celery_archive.demo import run_demo

    result = run_demo(directory, say=None if as_json else click.echo)
    if as_json:
        emit({"command": "demo", **result})


from celery_archive import cli_monitor, cli_query, cli_restore  # noqa: E402,F401  (register their commands)
from celery_archive.web import command as _serve  # noqa: E402,F401  (celery-archive serve)


def entry() -> None:
    """The ``celery-archive`` console script. adbc's DB-API module imports polars whenever it is
    installed (~0.1 s of start-up); the command line never uses polars, so a command-line
    process skips that import (importing celery_archive, or this module, leaves it alone)."""
    sys.modules.setdefault("polars", None)  # type: ignore[arg-type]
    gc.disable()  # until startup_over()
    try:
        main()
    finally:
        startup_over()


def startup_over() -> None:
    """The console script holds Python's cycle collector off while start-up imports libraries
    (SQLAlchemy, pyarrow, botocore: hundreds of thousands of objects that live as long as the
    process; collecting while they pile up cost a 200,000-result run ~0.1 s). Once they are
    in, they are frozen out of later collections and collection resumes."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
