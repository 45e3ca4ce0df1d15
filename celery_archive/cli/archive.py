"""Commands about what the archive holds: verify, runs, demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from celery_archive.cli.base import (
    _human_bytes,
    emit,
    handle_errors,
    json_option,
    main,
    sink_option,
)


@main.command()
@sink_option
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Verify only this run.")
@json_option
@handle_errors("verify", heavy=True)
def verify(sink: str, run_id: str | None, as_json: bool) -> None:
    """Read every archived file back and check size, sha256, rows and task ids.

    \b
    celery-archive verify --sink /var/archive
    """
    from celery_archive.archive.catalog import verify_archive

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
    from celery_archive.archive.catalog import list_runs

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


