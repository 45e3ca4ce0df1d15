"""The ``celery-archive`` command. Stages never print; this module does.

Exit codes: 0 done; 1 failed (source, sink or other error); 2 bad usage or configuration;
3 verification failed and nothing was deleted; 4 another run holds the archive's lock;
5 a task id asked for is not in the archive; 6 a result to restore is already in the backend
(--on-conflict fail) and nothing was restored.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from celery_archive import __version__
from celery_archive.config import RunConfig, parse_duration, parse_size
from celery_archive.errors import ArchiveError

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on one line instead of text.")
sink_option = click.option("--sink", required=True, metavar="URL",
                           help="Archive location: a directory path, file:///path or s3://bucket/prefix[?options] (see the README).")


def emit(obj: dict[str, Any]) -> None:
    click.echo(orjson.dumps(obj).decode())


def handle_errors(command: str) -> Callable[[F], F]:
    """Turn an ArchiveError into a clear message (or a JSON object) and its exit code."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ArchiveError as exc:
                if kwargs.get("as_json"):
                    emit({"command": command, "ok": False, "error": str(exc), "error_type": type(exc).__name__,
                          "exit_code": exc.exit_code, "problems": getattr(exc, "problems", [])})
                else:
                    click.echo(f"error: {exc}", err=True)
                sys.exit(exc.exit_code)

        return inner  # type: ignore[return-value]

    return wrap


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="celery-archive")
def main() -> None:
    """Archive Celery task results before cleanup deletes them, verify the archive,
    and purge from the result backend only what was verified."""


@main.command()
@click.option("--source", required=True, metavar="URL",
              help="The app's result_backend URL: db+postgresql+psycopg://user@host/db, db+sqlite:///results.db, redis://:pw@host:6379/0; "
                   "for django-celery-results, django+ and the Django database's URL: django+postgresql+psycopg://user@host/db.")
@sink_option
@click.option("--older-than", required=True, metavar="AGE", help="Take finished results whose date_done is older than this: 30d, 12h, 90m.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True, help="Data file format.")
@click.option("--compression", type=click.Choice(["zstd", "gzip", "snappy", "none"]), default=None,
              help="Data file compression (default: zstd for parquet, none for jsonl).",
              )
@click.option("--serializer", type=click.Choice(["json", "pickle", "msgpack", "yaml"]), default="json", show_default=True,
              help="The app's result_serializer, used to decode the queryable copy.")
@click.option("--task-table", default="celery_taskmeta", show_default=True, metavar="[SCHEMA.]NAME",
              help="Task result table (database_table_names / database_table_schemas).")
@click.option("--group-table", default="celery_tasksetmeta", show_default=True, metavar="[SCHEMA.]NAME", help="Group result table.")
@click.option("--batch-size", type=click.IntRange(1), default=10_000, show_default=True, help="Results read per query.")
@click.option("--max-file-size", default="128MiB", show_default=True, metavar="SIZE", help="Roll data files at this size.")
@click.option("--key-prefix", default="", metavar="PREFIX", help="Redis: result_backend_transport_options['global_keyprefix'].")
@click.option("--expiring-within", default=None, metavar="AGE",
              help="Redis: also take finished results whose remaining TTL is below this (archive them before Redis expires them).")
@click.option("--result-expires", default="1d", show_default=True, metavar="AGE",
              help="Redis: the app's result_expires; dates saved groups, which Celery stores without a date.")
@click.option("--master-name", default=None, help="Redis sentinel:// sources: the master's name (transport option master_name).")
@click.option("--dry-run", is_flag=True, help="Count what would be archived (by kind, status, task name, day, bytes); change nothing.")
@click.option("--no-delete", is_flag=True, help="Archive and verify only; leave the results in the backend.")
@click.option("--spool-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where data files are staged before they are stored (default: .tmp-spool in a local sink, else the system temp dir).")
@json_option
@handle_errors("run")
def run(source: str, sink: str, older_than: str, fmt: str, compression: str | None, serializer: str,
        task_table: str, group_table: str, batch_size: int, max_file_size: str, key_prefix: str,
        expiring_within: str | None, result_expires: str, master_name: str | None, dry_run: bool,
        no_delete: bool, spool_dir: Path | None, as_json: bool) -> None:
    """Archive expired results, verify the archive, then delete them from the backend.

    \b
    celery-archive run --source db+postgresql+psycopg://user@host/db \\
        --sink /var/archive --older-than 30d --format parquet
    """
    from celery_archive.pipeline.run import DryRunReport
    from celery_archive.pipeline.run import run as run_archive

    task_schema, _, task_name = task_table.rpartition(".")
    group_schema, _, group_name = group_table.rpartition(".")
    cfg = RunConfig(source=source, sink=sink, older_than=parse_duration(older_than), format=fmt,
                    compression=compression, serializer=serializer, task_table=task_name,
                    group_table=group_name, task_schema=task_schema or None, group_schema=group_schema or None,
                    batch_size=batch_size, max_file_bytes=parse_size(max_file_size), delete=not no_delete,
                    dry_run=dry_run, spool_dir=spool_dir, key_prefix=key_prefix,
                    expiring_within=parse_duration(expiring_within) if expiring_within else None,
                    result_expires=parse_duration(result_expires), master_name=master_name)
    report = run_archive(cfg)
    if as_json:
        emit(report.to_json())
        return
    if isinstance(report, DryRunReport):
        click.echo(f"dry run: {report.selected:,} results older than {report.cutoff} would be archived "
                   f"({_human_bytes(report.bytes)} stored) from {report.source}")
        for title, counts in (("by status", report.by_status), ("by task name", report.by_name), ("by day", report.by_day)):
            click.echo(f"  {title}: " + ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:12]))
        click.echo("nothing was changed; run again without --dry-run to archive")
        return
    if report.resumed or report.orphans_removed:
        click.echo(f"finished {len(report.resumed)} interrupted run(s), removed {report.orphans_removed} uncommitted file(s)")
    click.echo(f"run {report.run_id}: archived {report.archived:,} of {report.selected:,} results older than "
               f"{report.cutoff} in {report.files} file(s), {_human_bytes(report.bytes)}, to {report.sink}")
    counts = report.source_counts
    if counts.get("no_ttl") or counts.get("not_celery"):
        click.echo(f"note: {counts.get('no_ttl', 0):,} result key(s) have no TTL (they never expire by themselves); "
                   f"{counts.get('not_celery', 0):,} key(s) under the prefix are not Celery results and were left alone")
    click.echo(f"verified {report.verified:,}; deleted {report.deleted:,} from the backend"
               + (f"; kept {report.skipped_changed:,} that changed since they were read" if report.skipped_changed else "")
               + ("" if report.delete else " (--no-delete)"))


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
            click.echo(f"  {len(report.uncommitted)} uncommitted file(s) from an interrupted run; the next `run` removes them")
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


from celery_archive import cli_restore  # noqa: E402,F401  (registers restore and index)
