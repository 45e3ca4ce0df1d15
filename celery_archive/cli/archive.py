"""Commands about what the archive holds: verify, audit, runs, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from celery_archive.cli.base import (
    _human_bytes,
    emit,
    handle_errors,
    json_option,
    main,
    sink_option,
)


def _subset(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from celery_archive.archive.rotation import Subset
    from celery_archive.errors import ConfigError

    try:
        return None if value is None else Subset.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from celery_archive.config import parse_duration
    from celery_archive.errors import ConfigError

    try:
        return None if value is None else parse_duration(value, "--max-duration")
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.command()
@sink_option
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Verify only this run.")
@click.option("--subset", default=None, metavar="N/T", callback=_subset,
              help="Read only the N-th of T subsets of the data files (by a hash of each file's key): 1/T .. T/T cover every file once.")
@click.option("--max-duration", default=None, metavar="DURATION", callback=_duration,
              help="Read the least recently verified files first and begin no new one after this long (1h, 30m): "
                   "the next verify goes on where this one stopped.")
@click.option("--head", "expect_head", default=None, metavar="SHA256",
              help="A head hash printed by an earlier verify: fail unless it is still in the archive's hash chain.")
@json_option
@handle_errors("verify", heavy=True)
def verify(sink: str, run_id: str | None, subset: Any, max_duration: Any, expect_head: str | None, as_json: bool) -> None:
    """Read archived files back and check size, sha256, rows and task ids, and the manifests' hash chain.

    \b
    celery-archive verify --sink /var/archive
    celery-archive verify --sink /var/archive --subset 3/7
    celery-archive verify --sink /var/archive --max-duration 1h --json
    """
    from celery_archive.archive.catalog import verify_archive

    report = verify_archive(sink, run_id, subset=subset, max_duration=max_duration, expect_head=expect_head)
    if as_json:
        emit(report.to_json())
    else:
        which = f" (subset {report.subset})" if report.subset else ""
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.runs} run(s), {report.files} file(s){which}, "
                   f"{report.rows:,} results checked in {report.sink}")
        for p in report.problems:
            click.echo(f"  problem: {p}")
        if report.left:
            click.echo(f"  {report.left} file(s) left unread when --max-duration was up: the next verify reads them first")
        if report.uncommitted:
            click.echo(f"  {len(report.uncommitted)} file(s) of a run that has not committed (going on now, or interrupted: the next `run` removes those)")
        for n in report.notes:
            click.echo(f"  note: {n}")
        if report.head:
            click.echo(f"  head {report.head} ({report.chain_length} manifest(s) in the hash chain): keep it elsewhere; "
                       f"`celery-archive verify --sink {report.sink} --head {report.head}` checks it later")
    if not report.ok:
        sys.exit(3)


@main.command()
@sink_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line, one per event, instead of text.")
@handle_errors("audit")
def audit(sink: str, as_json: bool) -> None:
    """Print the archive's audit log, oldest first: every run, purge, forget, prune and verify.

    \b
    celery-archive audit --sink /var/archive
    celery-archive audit --sink /var/archive --json
    """
    from celery_archive.archive import audit as log
    from celery_archive.sinks import open_sink

    archive = open_sink(sink)
    n = 0
    for event in log.events(archive):
        n += 1
        if as_json:
            emit({"command": "audit", **event})
            continue
        rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time", "who", "pid", "version") and v is not None)
        click.echo(f"{event['time']}  {event['event']:<7} {event['who']} (pid {event['pid']}, {event['version']})  {rest}")
    if not n and not as_json:
        click.echo(f"no audit events in {archive.url} yet: run, verify, forget and prune write them")


@main.command()
@sink_option
@json_option
@handle_errors("runs")
def runs(sink: str, as_json: bool) -> None:
    """List the archive's committed runs, oldest first.

    \b
    celery-archive runs --sink /var/archive
    """
    from celery_archive.archive.catalog import list_runs, running

    infos, now = list_runs(sink), running(sink)
    if as_json:
        emit({"command": "runs", "sink": sink, "runs": [i.to_json() for i in infos], "running": now})
        return
    for r in now:
        click.echo(f"running: {r['run_id']}, {r['files_so_far']} data file(s) stored so far, not committed yet ({r['held_by']})")
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
@handle_errors("demo", heavy=True)
def demo(directory: Path, as_json: bool) -> None:
    """Fill a SQLite result backend with Celery's own backend code, archive it, verify, query.

    \b
    celery-archive demo
    """
    from celery_archive.demo import run_demo

    result = run_demo(directory, say=None if as_json else click.echo)
    if as_json:
        emit({"command": "demo", **result})


