"""``celery-archive forget`` and ``celery-archive prune``: results taken out of the archive
(an erasure request; an age past which nothing is kept)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from celery_archive.cli.base import emit, handle_errors, json_option, main, sink_option
from celery_archive.cli.restore import _under_lease, lease_option
from celery_archive.errors import ConfigError, NotArchivedError


def _ids(task_ids: tuple[str, ...], ids_from: Path | None) -> list[str]:
    ids = list(task_ids)
    if ids_from is not None:
        try:
            text = sys.stdin.read() if str(ids_from) == "-" else ids_from.read_text()
        except OSError as exc:
            raise ConfigError(f"--ids-from {ids_from}: cannot read it ({exc.strerror or exc}); give a file of task ids, one a line") from exc
        ids += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return ids


def _no_lease(sink: str, action: Any) -> Any:
    """A dry run changes nothing: it reads the archive as it is, without the lease."""
    from celery_archive.sinks import open_sink
    from celery_archive.spool import spool_dir

    archive = open_sink(sink)
    with spool_dir(archive.spool_root()) as tmp:
        return action(archive, Path(tmp))


@main.command()
@click.argument("task_ids", nargs=-1, metavar="[TASK_ID]...")
@click.option("--ids-from", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Task ids to forget, one a line (blank lines and # comments skipped; - reads stdin).")
@sink_option
@click.option("--reason", required=True, metavar="TEXT", help="Why they are erased (an erasure request's reference): kept in the audit log.")
@click.option("--dry-run", is_flag=True, help="Say what would be taken out and from which files; change nothing.")
@lease_option
@json_option
@handle_errors("forget", heavy=True)
def forget(task_ids: tuple[str, ...], ids_from: Path | None, sink: str, reason: str, dry_run: bool, lease_ttl: str,
           as_json: bool) -> None:
    """Erase results from the archive for good: every file holding one is rewritten without it.

    \b
    celery-archive forget 0f3c...e9 --sink /var/archive --reason "erasure request 2026-118"
    celery-archive forget --ids-from ids.txt --sink s3://bucket/prefix --reason "..." --json
    """
    from celery_archive.archive.forget import forget as run_forget

    ids = _ids(task_ids, ids_from)
    if dry_run:
        report = _no_lease(sink, lambda s, spool: run_forget(s, spool, ids, reason, dry_run=True))
    else:
        report = _under_lease(sink, lease_ttl, lambda s, spool: run_forget(s, spool, ids, reason))
    if report.missing and not report.forgotten:  # as restore says it: exit 5
        from celery_archive.restore.search import missing_message
        from celery_archive.sinks import open_sink

        done = "nothing was changed" if report.rewrite_id is None else "restore index entries naming no committed file were removed"
        raise NotArchivedError(f"{missing_message(report.missing, open_sink(sink))}; {done}")
    if as_json:
        emit(report.to_json())
    else:
        verb = "would forget" if dry_run else "forgot"
        click.echo(f"{verb} {len(report.forgotten)} id(s): {report.results} result(s) in {len(report.runs)} run(s) of {report.sink}"
                   + ("" if dry_run else f"; {report.files_rewritten} file(s) rewritten, {report.files_removed} removed"))
        for t in report.missing:
            click.echo(f"  not in the archive: {t}")


@main.command()
@sink_option
@click.option("--older-than", required=True, metavar="AGE",
              help="Take out results whose date_done is older than this: 7y, 400d, 12w (the archive's retention).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar="CELERY_ARCHIVE_CONFIG",
              show_envvar=True, help="TOML file whose [hold] (task_ids, names) keeps what it names (see `rules`).")
@click.option("--dry-run", is_flag=True, help="Count what would be taken out, kept by [hold] and skipped under Object Lock; change nothing.")
@lease_option
@json_option
@handle_errors("prune", heavy=True)
def prune(sink: str, older_than: str, config: Path | None, dry_run: bool, lease_ttl: str, as_json: bool) -> None:
    """Take results older than an age out of the archive (whole files, or files rewritten without them).

    \b
    celery-archive prune --sink /var/archive --older-than 7y --dry-run
    celery-archive prune --sink s3://bucket/prefix --older-than 400d --config archive.toml --json
    """
    import datetime as dt

    from celery_archive.archive.prune import prune as run_prune
    from celery_archive.config import parse_duration
    from celery_archive.pipeline.rules import policy_from
    from celery_archive.settings import load_file

    age = parse_duration(older_than, "--older-than")
    hold = policy_from(age, [], (load_file(config) if config else {}).get("hold", {})).hold
    cutoff = dt.datetime.now(dt.timezone.utc) - age
    if dry_run:
        report = _no_lease(sink, lambda s, spool: run_prune(s, spool, cutoff, hold, dry_run=True))
    else:
        report = _under_lease(sink, lease_ttl, lambda s, spool: run_prune(s, spool, cutoff, hold))
    if as_json:
        emit(report.to_json())
        return
    verb = "would take out" if dry_run else "took out"
    click.echo(f"{verb} {report.results:,} result(s) done before {report.cutoff} from {report.sink}: {report.files_removed} file(s) "
               f"removed, {report.files_rewritten} rewritten, in {len(report.runs)} run(s)")
    if report.held:
        click.echo(f"  {report.held:,} older result(s) kept by [hold]")
    if report.locked_files:
        click.echo(f"  {report.locked_files} file(s) skipped ({report.locked_results:,} older results): they cannot be deleted yet")
        for why in report.locked:
            click.echo(f"    {why}")
