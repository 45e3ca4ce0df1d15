"""Putting archived results back into a result backend, so that ``AsyncResult(id).get()``
works again: the exact stored bytes wherever the target stores results the way the source
did, a safe conversion (never an unpickling) where it does not.

Redis: SET the original key to the original value with a TTL, then PUBLISH it on the key's
channel (what Celery's own ``set`` does), so that a client already waiting in ``.get()``
wakes up. SQL: INSERT the row with its original column bytes, in the storage format of the
table it goes into (Celery 5.7 or <= 5.6), its id drawn from Celery's sequence where the
database has one.
"""

from __future__ import annotations

import datetime as dt
import pickle
from typing import Any

from celery_archive.backends import StorageFormat
from celery_archive.backends.codec import COMPRESSED_MAGIC, SERIALIZERS, decompress
from celery_archive.errors import ConversionError, SourceError, scrubbed


def loads_value(raw: bytes, content_type: str, encoding: str) -> Any:
    from kombu.serialization import loads

    if raw[:1] == b"\x80" or content_type == SERIALIZERS["pickle"][0]:
        raise ConversionError("it is a pickle, and celery-archive never unpickles what it archived")
    if raw[: len(COMPRESSED_MAGIC)] == COMPRESSED_MAGIC:
        raw = decompress(raw)[1]
    return loads(raw, content_type, encoding, accept={content_type})  # type: ignore[no-untyped-call]


def dumps_value(value: Any, serializer: str) -> bytes:
    from kombu.serialization import dumps

    _ctype, _enc, data = dumps(value, serializer=serializer)  # type: ignore[no-untyped-call]
    out: bytes = data if isinstance(data, bytes) else data.encode()
    return out


def decoded_meta(rec: dict[str, Any]) -> dict[str, Any]:
    """The Celery meta of an archived record as Python values (no pickle is ever loaded)."""
    ctype, enc = rec["content_type"], rec["content_encoding"]
    if rec["storage_format"] == StorageFormat.DJANGO:
        raise ConversionError("django-celery-results rows go back only into a django+ target")
    if rec["storage_format"] == StorageFormat.CELERY_REDIS:
        meta: dict[str, Any] = loads_value(rec["raw_value"], ctype, enc)
        return meta
    date_done = rec["date_done"]
    meta = {"status": rec["status"], "result": None if rec["raw_result"] is None else loads_value(rec["raw_result"], ctype, enc),
            "traceback": rec["traceback"], "children": [] if rec["raw_children"] is None else loads_value(rec["raw_children"], ctype, enc),
            "date_done": date_done.replace(tzinfo=dt.timezone.utc).isoformat() if date_done else None}
    if rec["name"] is not None:
        meta.update(name=rec["name"], args=None if rec["raw_args"] is None else loads_value(rec["raw_args"], ctype, enc),
                    kwargs=None if rec["raw_kwargs"] is None else loads_value(rec["raw_kwargs"], ctype, enc),
                    worker=rec["worker"], retries=rec["retries"], queue=rec["queue"])
    meta["task_id"] = rec["task_id"]
    return meta


def convert(rec: dict[str, Any], what: str, action: Any) -> Any:
    """Run ``action`` (a conversion), turning a failure into a ConversionError naming the id."""
    try:
        return action()
    except ConversionError as exc:
        raise ConversionError(f"{rec['kind']} {rec['task_id']} was archived from {rec['storage_format']} and cannot be "
                              f"put into {what}: {exc}; restore it into the kind of backend it came from") from exc
    except Exception as exc:
        raise ConversionError(f"{rec['kind']} {rec['task_id']}: its stored bytes cannot be converted for {what}: "
                              f"{type(exc).__name__}: {exc}") from exc


def pickled(value: Any) -> bytes:
    """What Celery <= 5.6's PickleType column holds for a value."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def backend_error(display_url: str, action: str, exc: Exception, secret: str | None) -> SourceError:
    return SourceError(f"{action} {display_url} failed: {scrubbed(exc, [secret])}")
