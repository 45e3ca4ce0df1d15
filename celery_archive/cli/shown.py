"""How ``celery-archive restore`` prints the results it finds (text, or one JSON object a
line), written through an ``echo`` it is given: click's, or ``fast.echo`` when a restore by id
runs without click (``fast.py``). No click here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.cli.output import json_line, json_value

if TYPE_CHECKING:
    from celery_archive.sinks import Sink

Echo = Callable[..., Any]  # echo(text) / echo(text, err=True), as click.echo

_JSON_TEXT = ("result", "args", "kwargs", "children")
_SHOWN = ("task_id", "kind", "status", "name", "date_done", "worker", "retries", "queue", "group_id", "parent_id",
          "args", "kwargs", "result", "children", "traceback", "decode_error", "content_type", "compression",
          "storage_format", "source", "run_id", "archived_at", "archive_key")
_READ = [name for name in _SHOWN if name != "archive_key"]  # what a lookup decodes (archive_key: where it was found)


def record_json(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"command": "restore", "found": True}
    for name in _SHOWN:
        value = rec.get(name)
        if name in _JSON_TEXT and isinstance(value, str):
            value = json_value(value)
        elif isinstance(value, dt.datetime):
            value = value.isoformat() + "Z"
        out[name] = value
    return out


def heading(rec: dict[str, Any]) -> str:
    """A record's first line as ``restore`` prints it."""
    return f"{rec['kind']} {rec['task_id']}  {rec['status'] or ''}  {rec['name'] or ''}".rstrip()


def shown_fields(rec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, text) of the lines under the heading, as ``restore`` prints them (None fields left out)."""
    for name in _SHOWN[4:]:
        value = rec.get(name)
        if value is None or name in ("retries", "queue"):
            continue
        if name == "worker":
            value = f"{value} (retries {rec.get('retries')}, queue {rec.get('queue')})"
        elif isinstance(value, dt.datetime):
            value = value.isoformat() + "Z"
        yield name, str(value).rstrip()


def _show(rec: dict[str, Any], echo: Echo) -> None:
    echo(heading(rec))
    for name, text in shown_fields(rec):
        echo(f"  {name:<15} " + text.replace("\n", "\n" + " " * 18))


def print_records(archive: Sink, spool: Path | None, task_ids: Sequence[str], filters: dict[str, Any], as_json: bool, echo: Echo) -> None:
    """Print the archived results of ``task_ids`` (or, without ids, those ``filters`` choose);
    NotArchivedError, after the others are printed, when an id is not in the archive."""
    from celery_archive.errors import NotArchivedError
    from celery_archive.restore.search import missing_message, records_for

    batches, found = records_for(archive, spool, task_ids, _READ, **filters)
    shown = 0
    for batch in batches:
        for rec in batch:
            shown += 1
            if as_json:
                echo(json_line(record_json(rec)))
            else:
                _show(rec, echo)
    for tid in found.missing:
        if as_json:
            echo(json_line({"command": "restore", "found": False, "task_id": tid, "error": "not in the archive"}))
    if found.missing:
        raise NotArchivedError(missing_message(found.missing, archive))
    if not shown and not as_json:
        echo(f"no archived results match in {archive.url}")
