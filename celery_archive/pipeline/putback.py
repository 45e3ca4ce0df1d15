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
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from celery_archive.errors import ConfigError, ConversionError, SourceError, scrubbed
from celery_archive.pipeline.decode import COMPRESSED_MAGIC, SERIALIZERS, decompress
from celery_archive.pipeline.redis_source import GROUP_PREFIX, TASK_PREFIX, full_prefix
from celery_archive.pipeline.source import REDIS_SCHEMES

POLICIES = ("skip", "overwrite", "fail")


@dataclass
class PutReport:
    restored: int = 0
    skipped: int = 0
    overwritten: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class Target(Protocol):
    display_url: str

    def put(self, records: list[dict[str, Any]], on_conflict: str) -> PutReport: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TargetConfig:
    url: str
    ttl: dt.timedelta | None = dt.timedelta(days=1)  # Redis: result_expires; None keeps no TTL
    serializer: str = "json"  # the target app's result_serializer (used only to convert)
    key_prefix: str = ""  # Redis global_keyprefix (used only for results archived from SQL)
    task_table: str = "celery_taskmeta"
    group_table: str = "celery_tasksetmeta"
    task_schema: str | None = None
    group_schema: str | None = None
    master_name: str | None = None


def open_target(cfg: TargetConfig) -> Target:
    if cfg.url.split("://", 1)[0] in REDIS_SCHEMES:
        from celery_archive.pipeline.putback_redis import RedisTarget

        return RedisTarget(cfg)
    if cfg.url.startswith("django+"):
        from celery_archive.pipeline.putback_django import DjangoTarget

        return DjangoTarget(cfg)
    from celery_archive.pipeline.putback_sql import SqlTarget

    return SqlTarget(cfg)


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
    if rec["storage_format"] == "django-celery-results":
        raise ConversionError("django-celery-results rows go back only into a django+ target")
    if rec["storage_format"] == "celery-redis":
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
                              f"put into {what}: {exc}; restore it into the kind of backend it came from") from None
    except Exception as exc:  # noqa: BLE001 - a payload kombu cannot read
        raise ConversionError(f"{rec['kind']} {rec['task_id']}: its stored bytes cannot be converted for {what}: "
                              f"{type(exc).__name__}: {exc}") from None


def redis_key(rec: dict[str, Any], key_prefix: str) -> bytes:
    """The key a record goes back under: for a result archived from Redis its original key,
    byte for byte (raw_key; record schema v1 files have only its text, source_table)."""
    if rec["storage_format"] == "celery-redis" and rec.get("raw_key"):
        return bytes(rec["raw_key"])
    if rec["storage_format"] == "celery-redis" and rec["source_table"]:
        return str(rec["source_table"]).encode()  # the original key, with the app's global prefix
    prefix = GROUP_PREFIX if rec["kind"] == "group" else TASK_PREFIX
    return f"{full_prefix(key_prefix)}{prefix}{rec['task_id']}".encode()


def pickled(value: Any) -> bytes:
    """What Celery <= 5.6's PickleType column holds for a value."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def backend_error(display_url: str, action: str, exc: Exception, secret: str | None) -> SourceError:
    return SourceError(f"{action} {display_url} failed: {scrubbed(exc, [secret])}")


def check_policy(on_conflict: str) -> None:
    if on_conflict not in POLICIES:
        raise ConfigError(f"--on-conflict must be one of {', '.join(POLICIES)}, not {on_conflict!r}")

