"""The common Redis value read in one pass: a task's meta as Celery's json serializer writes it
(a plain JSON object: no compression, no kombu type markers), decoded by msgspec into the fields
a record needs, with result, args, kwargs and children kept as their stored JSON text (as a SQL
source's JSON columns are kept). What this does not take (another serializer, a field of
another type, no result, text that is not UTF-8 or not JSON) gives None: the caller decodes it
the general way (codec.decode_value), which reports it."""

from __future__ import annotations

from typing import Any

import msgspec

_NULL = msgspec.Raw(b"null")


class _Task(msgspec.Struct):
    result: msgspec.Raw  # required: a meta without one is not a Celery result
    status: str
    date_done: str | None = None
    task_id: str | None = None
    name: str | None = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None
    traceback: str | None = None
    group_id: str | None = None
    parent_id: str | None = None
    args: msgspec.Raw = _NULL
    kwargs: msgspec.Raw = _NULL
    children: msgspec.Raw = _NULL


_DECODER = msgspec.json.Decoder(_Task)


def _text(raw: msgspec.Raw) -> bytes | None:
    out = bytes(raw)
    return None if out == b"null" else out


def task(raw: bytes) -> tuple[Any, ...] | None:
    """(task_id, status, date_done, name, worker, retries, queue, traceback, group_id, parent_id,
    result, args, kwargs, children) of a plain JSON task meta, the last four as JSON text (None
    for null or absent); None if it is not one."""
    if raw[:1] != b"{" or b'"__type__"' in raw:
        return None
    try:
        raw.decode("utf-8")  # msgspec checks the fields it decodes, not the text it keeps
        m = _DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # msgspec nests ~985 deep at most
        return None
    return (m.task_id, m.status, m.date_done, m.name, m.worker, m.retries, m.queue, m.traceback, m.group_id,
            m.parent_id, _text(m.result), _text(m.args), _text(m.kwargs), _text(m.children))
