"""``celery-archive stats`` and ``celery-archive rules check``: read-only views of a backend."""

from __future__ import annotations

import sys
from typing import Any

import click

from celery_archive.cli.base import _human_bytes, emit, handle_errors, json_option, main, newest_line, source_options

WARN_EXIT = 7  # stats --warn-above: more results than that


def _config(values: dict[str, Any], expires_is_age: bool = False) -> Any:
    from celery_archive.settings import run_config

    return run_config(values, click.get_current_context().meta.get("celery_archive.file"), need_sink=False,
                      expires_is_age=expires_is_age)


@main.command()
@source_options
@click.option("--warn-above", type=click.IntRange(0), default=None, metavar="N",
              help=f"Exit with code {WARN_EXIT} when the backend holds more than N results (for cron and monitoring).")
@json_option
@handle_errors("stats")
def stats(config: Any, warn_above: int | None, as_json: bool, **values: Any) -> None:
    """What the result backend holds: results by status, task name and age, bytes, the oldest,
    keys without a TTL (Redis), and how many are past retention (--older-than, by default
    --result-expires: Celery's result_expires, one day) and not yet archived.

    \b
    celery-archive stats --source db+sqlite:///results.db --older-than 30d
    celery-archive -A proj.celery stats --warn-above 100000
    """
    from celery_archive.pipeline.inspect import stats as backend_stats

    report = backend_stats(_config(values, expires_is_age=True), warn_above)
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"{report.source}: {report.results:,} results, {_human_bytes(report.bytes)} stored"
                   + (f", oldest {report.oldest}" if report.oldest else ""))
        for title, counts in (("by status", report.by_status), ("by age", report.by_age), ("by task name", report.by_name)):
            click.echo(f"  {title}: " + (", ".join(f"{k} {v:,}" for k, v in counts.items()) or "-"))
        click.echo(f"  past retention ({report.retention}) and not yet archived: {report.past_retention:,}"
                   + ("; `celery-archive run` archives them" if report.past_retention else ""))
        click.echo(newest_line(report.newest, report.now, "the backend holds"))
        click.echo(newest_line(report.newest_past_retention, report.now, "is past retention"))
        for note in report.warnings:
            click.echo(f"warning: {note}", err=True)
        if report.no_ttl is not None:
            click.echo(f"  keys without a TTL: {report.no_ttl:,}; unfinished: {report.unfinished:,}")
            from celery_archive.backends.redis.source import LEFT_ALONE

            alone = {k: n for k, n in report.source_counts.items() if k in LEFT_ALONE and n}
            if alone:
                click.echo("  a run would leave alone: " + ", ".join(f"{k} {n:,}" for k, n in alone.items())
                           + " (see the README, source_counts)")
        if report.over:
            click.echo(f"warning: {report.results:,} results is above --warn-above {warn_above:,}", err=True)
    if report.over:
        sys.exit(WARN_EXIT)


@main.group()
def rules() -> None:
    """Retention rules ([[rules]] and [hold] in the --config file)."""


@rules.command("check")
@source_options
@json_option
@handle_errors("rules check")
def rules_check(config: Any, as_json: bool, **values: Any) -> None:
    """Which rule takes what, as a run would now: per rule, how many results it would archive,
    delete or keep, and how many are not due yet. Changes nothing.

    \b
    celery-archive rules check --config archive.toml
    """
    from celery_archive.pipeline.inspect import check_rules

    report = check_rules(_config(values))
    for note in [] if as_json else report.warnings:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        emit(report.to_json())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("rule", "match", "status", "older than", "action", "archive", "delete", "keep", "not due")
    for r in report.rules:
        table.add_row(r["rule"], r["match"], ",".join(r.get("status") or []) or "any", r.get("older_than", ""), r["action"],
                      f"{r['would_archive']:,}", f"{r['would_delete']:,}", f"{r['would_keep']:,}", f"{r['not_due']:,}")
    Console(width=160).print(table)
    click.echo(f"{report.source}: nothing was changed; `celery-archive run` with the same --config acts on this")
