"""An archived record as the meta the live backend would have answered with, decoded by the
app's own rules: its ``result_accept_content`` decides, a content type it does not accept is
refused with :class:`ArchivedContentRefused` (never unpickled), and exceptions come back as
the live backend makes them (``meta_from_decoded``)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import orjson
from kombu.exceptions import ContentDisallowed

from celery_archive.backends.codec import COMPRESSED_MAGIC, decompress
from celery_archive.errors import ConversionError

PICKLE = "application/x-python-serialize"
NAMES = {PICKLE: "pickle", "application/json": "json", "application/x-msgpack": "msgpack", "application/x-yaml": "yaml"}


class ArchivedContentRefused(ConversionError, ContentDisallowed):
    """An archived result is stored in a serializer the app does not accept."""


def _loads(backend: Any, raw: bytes | str | None, ctype: str, enc: str, what: str) -> Any:
    from kombu.serialization import loads

    if raw is None:
        return None
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if data[: len(COMPRESSED_MAGIC)] == COMPRESSED_MAGIC:
        data = decompress(data)[1]  # bounded: a payload inflating past 64 MiB is refused
    if ctype not in backend.accept:
        name = NAMES.get(ctype, ctype)
        accepted = ", ".join(sorted(NAMES.get(c, c) for c in backend.accept))
        raise ArchivedContentRefused(
            f"{what} is archived as {name} ({ctype}), which this app's result_accept_content ({accepted}) does not "
            f"accept, so it was not decoded{' (nothing is ever unpickled unless the app accepts pickle)' if ctype == PICKLE else ''}; "
            f"add {name!r} to result_accept_content if you trust the archive, or read it with `celery-archive restore`")
    return loads(data, content_type=ctype, content_encoding=enc, accept=backend.accept)  # type: ignore[no-untyped-call]


def _date(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _naive(value: Any) -> Any:
    """A date as Celery's DatabaseBackend hands it out: naive UTC."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def task_meta(backend: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """The meta of an archived task, as ``backend._get_task_meta_for`` returns it."""
    fmt, ctype, enc = rec["storage_format"], rec["content_type"], rec["content_encoding"]
    what = f"task {rec['task_id']}"
    if fmt == "celery-redis":
        meta: dict[str, Any] = _loads(backend, rec["raw_value"], ctype, enc, what)
    elif fmt == "django-celery-results":
        meta = _django(backend, rec, what)
    else:
        result_type = PICKLE if fmt == "celery-db-5.6" else ctype  # Celery <= 5.6 pickled the result column
        meta = {"task_id": rec["task_id"], "status": rec["status"],
                "result": _loads(backend, rec["raw_result"], result_type, "binary" if result_type == PICKLE else enc, what),
                "traceback": rec["traceback"], "date_done": _naive(rec["date_done"]),
                "children": _loads(backend, rec["raw_children"], ctype, enc, what) or []}
        if rec.get("name") is not None:
            meta.update(name=rec["name"], args=_loads(backend, rec["raw_args"], ctype, enc, what),
                        kwargs=_loads(backend, rec["raw_kwargs"], ctype, enc, what), worker=rec["worker"],
                        retries=rec["retries"], queue=rec["queue"])
    if not isinstance(meta, dict) or "status" not in meta:
        raise ConversionError(f"{what}: its archived value is not a Celery result meta")
    out: dict[str, Any] = backend.meta_from_decoded(meta)
    return out


def _django(backend: Any, rec: dict[str, Any], what: str) -> dict[str, Any]:
    """What django-celery-results' backend makes of its row (``_get_task_meta_for``)."""
    row = orjson.loads(rec["raw_value"])
    ctype, enc = row["content_type"], row["content_encoding"]

    def content(value: Any) -> Any:
        if not value:
            return None
        if enc == "binary":
            value = base64.b64decode(value)
        return _loads(backend, value, ctype, enc, what)

    extra = content(row.get("meta")) or {}
    args, kwargs = content(row.get("task_args")), content(row.get("task_kwargs"))
    meta = {"task_id": row["task_id"], "task_name": row.get("task_name"),
            "status": row["status"], "result": content(row.get("result")), "date_done": _date(rec["date_done"]),
            "traceback": row.get("traceback"), "worker": row.get("worker"), "task_args": args, "task_kwargs": kwargs}
    meta.update(extra)
    meta.update(args=args, kwargs=kwargs)
    return meta


def group_meta(backend: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """The meta of an archived group, as ``backend._restore_group`` returns it (its result a
    GroupResult)."""
    from celery.result import GroupResult, result_from_tuple

    fmt, ctype, enc = rec["storage_format"], rec["content_type"], rec["content_encoding"]
    what = f"group {rec['task_id']}"
    if fmt == "celery-redis":
        value = (_loads(backend, rec["raw_value"], ctype, enc, what) or {}).get("result")
    elif fmt == "django-celery-results":
        row = orjson.loads(rec["raw_value"])
        raw = row.get("result")
        if raw and row["content_encoding"] == "binary":
            raw = base64.b64decode(raw)
        value = _loads(backend, raw, row["content_type"], row["content_encoding"], what)
    else:
        result_type = PICKLE if fmt == "celery-db-5.6" else ctype
        value = _loads(backend, rec["raw_result"], result_type, "binary" if result_type == PICKLE else enc, what)
    result = value if value is None or isinstance(value, GroupResult) else result_from_tuple(value, backend.app)
    date = _date(rec["date_done"]) if fmt == "django-celery-results" else _naive(rec["date_done"])
    return {"group_id": rec["task_id"], "result": result, "date_done": date}
