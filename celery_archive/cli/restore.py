"""``celery-archive restore`` and ``celery-archive index``: find archived results, print them
or put them back into a result backend, and keep the restore index."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

import click

from celery_archive.cli.base import emit, handle_errors, json_option, main, sink_option
from celery_archive.config import is_duration, parse_duration
from celery_archive.errors import ConfigError


def _when(value: str | None, option: str) -> dt.datetime | None:
    """An ISO date/time (UTC unless it says otherwise) or an age (30d: that long ago)."""
    if value is None:
        return None
    try:
        ts = dt.datetime.fromisoformat(value)
        return ts.astimezone(dt.timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts
    except ValueError:
        pass
    except OverflowError as exc:
        raise ConfigError(f"{option} {value!r} is out of range once taken to UTC: give a later date") from exc
    if not is_duration(value):
        raise ConfigError(f"{option} {value!r}: give a date (2026-01-31), a UTC time (2026-01-31T12:00) or an age (30d)")
    age = parse_duration(value, option)  # an age too long to reach back is named as such
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - age


@main.command()
@click.argument("task_ids", nargs=-1, metavar="[TASK_ID]...")
@sink_option
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Every result of this run.")
@click.option("--since", default=None, metavar="WHEN", help="Results done at or after this (2026-01-31, 2026-01-31T12:00, or an age: 90d).")
@click.option("--until", default=None, metavar="WHEN", help="Results done before this (same forms as --since).")
@click.option("--name", "names", multiple=True, metavar="PATTERN", help="Only tasks whose name matches (glob; repeatable).")
@click.option("--into", default=None, metavar="URL", help="Put the results back into this result backend (redis://..., db+postgresql://..., django+postgresql://...).")
@click.option("--on-conflict", type=click.Choice(["skip", "overwrite", "fail"]), default="skip", show_default=True,
              help="When a result is already in the backend: leave it, replace it, or restore nothing.")
@click.option("--ttl", default=None, metavar="AGE", help="Redis: expire restored keys after this (default: --result-expires); 0 keeps them.")
@click.option("--result-expires", default="1d", show_default=True, metavar="AGE", help="Redis: the app's result_expires.")
@click.option("--serializer", type=click.Choice(["json", "pickle", "msgpack", "yaml"]), default="json", show_default=True,
              help="The target app's result_serializer (used only when a result moves between Redis and SQL).")
@click.option("--task-table", default="celery_taskmeta", show_default=True, metavar="[SCHEMA.]NAME", help="SQL: the task result table.")
@click.option("--group-table", default="celery_tasksetmeta", show_default=True, metavar="[SCHEMA.]NAME", help="SQL: the group result table.")
@click.option("--key-prefix", default="", metavar="PREFIX", help="Redis: global_keyprefix (for results archived from SQL).")
@click.option("--master-name", default=None, help="Redis sentinel:// targets: the master's name.")
@click.option("--spool-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where data files are staged for bulk restores.")
@json_option
@handle_errors("restore")
def restore(task_ids: tuple[str, ...], sink: str, run_id: str | None, since: str | None, until: str | None,
            names: tuple[str, ...], into: str | None, on_conflict: str, ttl: str | None, result_expires: str,
            serializer: str, task_table: str, group_table: str, key_prefix: str, master_name: str | None,
            spool_dir: Path | None, as_json: bool) -> None:
    """Print archived results, or put them back into a result backend (--into).

    \b
    celery-archive restore 0f3c...e9 --sink /var/archive
    celery-archive restore 0f3c...e9 7a1b...c2 --sink /var/archive --into redis://host:6379/0
    celery-archive restore --run RUN_ID --sink /var/archive --into db+postgresql://...
    """
    from celery_archive.cli.shown import print_records
    from celery_archive.restore.search import restore_into
    from celery_archive.sinks import open_sink
    from celery_archive.spool import spool_dir as make_spool

    filters = {"run_id": run_id, "since": _when(since, "--since"), "until": _when(until, "--until"), "names": names}
    if not task_ids and not (run_id or since or until or names):
        raise ConfigError("give task ids, or --run / --since / --until / --name to choose results")
    if task_ids and (run_id or since or until or names):
        raise ConfigError("give either task ids or --run/--since/--until/--name, not both")
    archive = open_sink(sink)
    target = None
    if into:  # a bad --into is named before anything is made
        from celery_archive.backends import TargetConfig, open_target

        t_schema, _, t_name = task_table.rpartition(".")
        g_schema, _, g_name = group_table.rpartition(".")
        expires = dt.timedelta(0) if ttl == "0" else (parse_duration(ttl, "--ttl") if ttl is not None
                                                      else parse_duration(result_expires, "--result-expires"))
        target = open_target(TargetConfig(into, expires or None, serializer, key_prefix, t_name, g_name,
                                          t_schema or None, g_schema or None, master_name))
    # a staging directory only for a selection: a lookup by id reads through the index (no
    # spool to make, to sweep and remove, so it needs no write access to the archive)
    with make_spool(spool_dir or archive.spool_root()) if not task_ids else contextlib.nullcontext() as tmp:
        spool = None if tmp is None else Path(tmp)
        if target is not None:
            try:
                report = restore_into(archive, target, spool, task_ids, on_conflict, **filters)
            finally:
                target.close()
            if as_json:
                emit(report.to_json())
            else:
                click.echo(f"restored {report.restored:,} of {report.found:,} result(s) into {report.into}"
                           + (f"; skipped {report.skipped:,} already there (--on-conflict overwrite replaces them)" if report.skipped else "")
                           + (f"; replaced {report.overwritten:,}" if report.overwritten else ""))
            return
        print_records(archive, spool, task_ids, filters, as_json, click.echo)


@main.group()
def index() -> None:
    """Keep the restore index: task id -> (data file, row group or byte range).

    Every run adds its entries to the index's log; `compact` merges them into packs, so that
    a lookup reads one index object; `rebuild` makes the index again from the data files.

    \b
    celery-archive index rebuild --sink /var/archive
    celery-archive index compact --sink /var/archive
    """


def _under_lease(sink: str, lease_ttl: str, action: Any) -> Any:
    """``action(sink, spool)`` with the archive's lease held, every write fenced by it."""
    from celery_archive.archive import manifest as mf
    from celery_archive.pipeline.lease import FencedSink, Lease
    from celery_archive.sinks import open_sink
    from celery_archive.spool import spool_dir

    archive = open_sink(sink)
    lease = Lease(archive, f"maint-{mf.new_run_id(dt.datetime.now(dt.timezone.utc))}", parse_duration(lease_ttl).total_seconds(),
                  on_wait=lambda msg: click.echo(f"celery-archive: {msg}", err=True))
    with lease.holding(), spool_dir(archive.spool_root()) as tmp:
        return action(FencedSink(archive, lease), Path(tmp))


lease_option = click.option("--lease-ttl", default="60s", show_default=True, metavar="AGE", envvar="CELERY_ARCHIVE_LEASE_TTL",
                            show_envvar=True, help="The archive's lease goes stale after this long without renewal (see `run --help`).")


def _report(report: Any, verb: str, as_json: bool) -> None:
    if as_json:
        emit({**report.to_json(), "action": verb})
    else:
        click.echo(f"index {verb}: {report.entries:,} entries in {report.buckets} packs (generation {report.generation}); "
                   f"merged {report.merged_runs} run file(s)")


@index.command()
@sink_option
@lease_option
@json_option
@handle_errors("index", heavy=True)
def rebuild(sink: str, lease_ttl: str, as_json: bool) -> None:
    """Make the index again from the archive's data files alone.

    \b
    celery-archive index rebuild --sink /var/archive
    """
    from celery_archive.index.packs import compact, located

    _report(_under_lease(sink, lease_ttl, lambda s, spool: compact(s, spool, rebuilt=located(s, spool))), "rebuilt", as_json)


@index.command("compact")
@sink_option
@lease_option
@json_option
@handle_errors("index", heavy=True)
def compact_index(sink: str, lease_ttl: str, as_json: bool) -> None:
    """Merge the runs' index files into packs: a lookup then costs one index read.

    \b
    celery-archive index compact --sink /var/archive
    """
    from celery_archive.index.packs import compact

    _report(_under_lease(sink, lease_ttl, compact), "compacted", as_json)


@main.group()
def manifest() -> None:
    """Keep the runs' manifests (a run counts in the archive once its manifest exists)."""


@manifest.command("rebuild")
@sink_option
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Only this run.")
@lease_option
@json_option
@handle_errors("manifest rebuild", heavy=True)
def rebuild_manifest(sink: str, run_id: str | None, lease_ttl: str, as_json: bool) -> None:
    """Write the lost manifest of a committed run again: from its commit record, or from its
    data files and run report. `verify` names runs that need it.

    \b
    celery-archive manifest rebuild --sink /var/archive
    """
    from celery_archive.archive.rebuild import rebuild_manifests

    report = _under_lease(sink, lease_ttl, lambda s, spool: rebuild_manifests(s, spool, run_id))
    if as_json:
        emit(report.to_json())
        return
    for r in report.rebuilt:
        click.echo(f"run {r['run_id']}: manifest written again from its {r['source']} ({r['files']} file(s), {r['rows']:,} results)")
    for r in report.skipped:
        click.echo(f"run {r['run_id']}: not rebuilt: {r['why']}")
    if not report.rebuilt and not report.skipped:
        click.echo(f"every data file in {report.sink} is named by a manifest: nothing to rebuild")
    elif report.rebuilt:
        click.echo(f"`celery-archive verify --sink {report.sink}` checks them")
