"""The archive's audit log: what was done to it, by whom and when, append-only.

One event per object, ``audit/<YYYYMMDDTHHMMSS.ffffffZ>-<random>.json`` (layout.py), each a
create-only put like every archive object (``If-None-Match: *`` on S3; on a sink with
``object_lock``/``legal_hold`` options, and on a bucket with a default Object Lock retention,
it is locked like the manifests). Nothing in celery-archive ever deletes or rewrites one, so
the log only grows; keys sort by the time they were written.

An event holds its kind (:data:`EVENTS`), ``time`` (UTC, ISO 8601), ``who`` (``user@host``)
and ``pid``, the celery-archive ``version``, and the fields the caller gives: counts, run
ids, digests, a reason. Never result content (no task ids' results, arguments or
tracebacks): a caller passes what describes the operation, not what it moved.

    record(sink, "run", run_id=..., manifest_sha256=..., archived=10, deleted=10)
    for event in events(sink): ...
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import orjson

from celery_archive.archive.layout import AUDIT, audit_key
from celery_archive.errors import ConfigError, DamagedObjectError, ObjectExistsError
from celery_archive.sinks import Sink
from celery_archive.version import __version__

EVENTS = ("run", "purge", "forget", "prune", "verify")
_RESERVED = frozenset({"event", "time", "who", "pid", "version", "command"})


def who() -> str:
    """``user@host`` of this process (the uid where no user name is known, as in a container)."""
    try:
        import getpass

        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER: a container's anonymous uid
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def record(sink: Sink, event: str, **fields: Any) -> None:
    """Append one ``event`` (one of :data:`EVENTS`) with ``fields`` to the archive's audit log.

    ``fields`` must be JSON values (digests, counts, run ids, a reason), never result content.
    A fenced sink (a run's) checks the run's lease before the put, as for every write."""
    if event not in EVENTS:
        raise ConfigError(f"audit event {event!r} is not one of {', '.join(EVENTS)}")
    clash = _RESERVED & set(fields)
    if clash:
        raise ConfigError(f"audit fields {sorted(clash)} are set by the audit log itself")
    now = dt.datetime.now(dt.timezone.utc)
    body = {"event": event, "time": now.isoformat(), "who": who(), "pid": os.getpid(), "version": __version__, **fields}
    try:
        data = orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n"
    except TypeError as exc:
        raise ConfigError(f"audit event {event!r}: a field is not a JSON value ({exc})") from exc
    while True:
        try:
            sink.put_bytes(audit_key(now, secrets.token_hex(4)), data)
            return
        except ObjectExistsError:  # the same microsecond and the same 32 random bits: draw again
            continue


def events(sink: Sink) -> Iterator[dict[str, Any]]:
    """Every event of the archive's audit log, oldest first: keys hold the event's time, and a
    sink lists keys in order."""
    for obj in sink.list(AUDIT):
        if not obj.key.endswith(".json"):
            continue
        with sink.open(obj.key) as f:
            raw = f.read()
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DamagedObjectError(f"{obj.key} in {sink.url} is not valid JSON ({exc}): the audit log is damaged") from exc
        if not isinstance(event, dict) or not isinstance(event.get("time"), str) or event.get("event") not in EVENTS:
            raise DamagedObjectError(f"{obj.key} in {sink.url} is not an audit event: the audit log is damaged")
        yield event
