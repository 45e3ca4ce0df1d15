"""Archived records as the pages and the API show them: the fields in the order and form
``celery-archive restore`` prints them, the JSON object of ``restore --json``, the ids of a
result's children and the command that puts it back."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from celery_archive.cli.shown import heading as heading  # the pages show it as restore prints it
from celery_archive.cli.shown import record_json as restore_json
from celery_archive.cli.shown import shown_fields

LINKED = {"group_id", "parent_id"}  # fields holding another result's id


@dataclass(frozen=True)
class Field:
    name: str
    text: str
    link: str | None = None  # "result" or "run": the text is the id of one


def as_json(rec: dict[str, Any]) -> dict[str, Any]:
    """The object ``celery-archive restore ID --json`` prints for this record."""
    return restore_json(rec)


def fields(rec: dict[str, Any]) -> Iterator[Field]:
    """The lines under the heading, as ``restore`` prints them (None fields left out)."""
    for name, text in shown_fields(rec):
        yield Field(name, text, "result" if name in LINKED else "run" if name == "run_id" else None)


def _ids(tuples: Any) -> Iterator[str]:
    """Ids of Celery ``as_tuple()`` values: ``[[id, parent], children]`` each."""
    for t in tuples if isinstance(tuples, list) else []:
        if isinstance(t, list) and t and isinstance(t[0], list) and t[0] and isinstance(t[0][0], str):
            yield t[0][0]


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def children(rec: dict[str, Any]) -> list[str]:
    """The ids of a group's members, or of a task's children."""
    if rec["kind"] == "group":
        value = _loads(rec.get("result"))  # GroupResult.as_tuple(): [[id, parent], [member, ...]]
        members = value[1] if isinstance(value, list) and len(value) == 2 else None
        return list(dict.fromkeys(_ids(members)))
    return list(dict.fromkeys(_ids(_loads(rec.get("children")))))


def restore_command(rec: dict[str, Any], sink_url: str) -> str:
    """The command that puts this result back where it came from."""
    return shlex.join(["celery-archive", "restore", rec["task_id"], "--sink", sink_url, "--into", rec.get("source") or "URL"])
