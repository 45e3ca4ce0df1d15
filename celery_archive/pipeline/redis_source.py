"""Celery's Redis result backend as a source: SCAN (never KEYS), pipelined GET and PTTL,
safe decoding of each stored meta, and a compare-and-delete that removes a key only while it
still holds the exact bytes that were archived and verified."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from celery_archive.errors import ConfigError, SourceError, scrubbed
from celery_archive.pipeline.ahead import ahead
from celery_archive.pipeline.decode import SERIALIZERS, UnsafePayload, decode_value, to_json_text
from celery_archive.pipeline.purge import PurgeBatch
from celery_archive.pipeline.records import assemble, utc_naive
from celery_archive.pipeline.redis_url import connect, redact

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")
TASK_PREFIX, GROUP_PREFIX = "celery-task-meta-", "celery-taskset-meta-"
CHORD_SUFFIXES = (b".j", b".t", b".s", b".d", b".c")  # chord bookkeeping on group keys: never touched
_CAS = """
local deleted = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    deleted = deleted + 1
  end
end
return deleted
"""
_CAS_CHUNK = 2000
_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key) or false
  out[2 * i] = redis.call('PTTL', key)
end
return out
"""
_READ_CHUNK = 2000  # keys per script call: a few milliseconds of Redis time each


@dataclass(frozen=True)
class RedisSourceConfig:
    url: str
    serializer: str = "json"  # result_serializer
    key_prefix: str = ""  # result_backend_transport_options["global_keyprefix"]
    expiring_within: dt.timedelta | None = None  # also take results whose TTL is below this
    result_expires: dt.timedelta = dt.timedelta(days=1)  # the app's; dates groups (Celery stores none)
    master_name: str | None = None  # sentinel: result_backend_transport_options["master_name"]


def full_prefix(prefix: str) -> str:
    """Celery's global_keyprefix as Celery applies it: ``_`` added unless it ends in ``:_-.``."""
    return prefix if not prefix or prefix[-1] in ":_-." else prefix + "_"


_ROW_FIELDS = ("task_id", "kind", "status", "date_done", "name", "worker", "retries", "queue", "traceback", "group_id",
               "parent_id", "result", "args", "kwargs", "children", "decode_error", "raw_value", "content_type",
               "content_encoding", "compression", "source_table", "ttl_ms")
_BINARY_TYPES = (SERIALIZERS["pickle"][0], SERIALIZERS["msgpack"][0])


def _json(meta: dict[str, Any], field: str, errors: list[str]) -> bytes | None:
    if field not in meta or meta[field] is None:
        return None
    try:
        return to_json_text(meta[field])
    except (UnsafePayload, TypeError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, UnsafePayload) else exc  # orjson wraps what default() raised
        errors.append(f"{field}: {cause}")
        return None


class RedisSource:
    storage_format = "celery-redis"
    purge_columns: tuple[str, ...] = ("source_table", "raw_value")

    def __init__(self, config: RedisSourceConfig) -> None:
        if config.serializer not in SERIALIZERS:
            raise ConfigError(f"unknown --serializer {config.serializer!r}")
        self.config = config
        self.display_url = redact(config.url)
        self._secrets = [unquote(p.password) for p in map(urlsplit, config.url.split(";")) if p.password]
        self.prefix = full_prefix(config.key_prefix)
        self.client = connect(config.url, config.master_name)
        self.counts: Counter[str] = Counter()

    def _error(self, action: str, exc: Exception) -> SourceError:
        import redis

        detail = scrubbed(exc, self._secrets)
        if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in detail or "NOAUTH" in detail:
            detail = f"authentication failed ({detail}): check the password in --source"
        elif "DB index is out of range" in detail:
            detail = f"{detail}: the database number in --source does not exist on this server"
        return SourceError(f"{action} {self.display_url} failed: {detail}")

    def open(self) -> None:
        import redis

        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise self._error("connecting to", exc) from exc

    def describe(self) -> dict[str, str]:
        return {"task": f"{self.prefix}{TASK_PREFIX}*", "group": f"{self.prefix}{GROUP_PREFIX}*"}

    def close(self) -> None:
        self.client.close()

    # -- reading ----------------------------------------------------------------------------
    def _scan(self, kind: str, batch_size: int) -> Iterator[list[tuple[bytes, bytes | None, int]]]:
        """(key, value, pttl) in batches: SCAN, then one pipelined GET and PTTL per batch."""
        import redis

        pattern = self.describe()[kind]
        keys: list[bytes] = []

        read = self.client.register_script(_READ)

        def load(batch: list[bytes]) -> list[tuple[bytes, bytes | None, int]]:
            # GET and PTTL of each key, in one script call per chunk, the calls pipelined
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(batch), _READ_CHUNK):
                read(keys=batch[i : i + _READ_CHUNK], client=pipe)
            replies = [item for reply in pipe.execute() for item in reply]
            return list(zip(batch, replies[0::2], replies[1::2]))

        try:
            for key in self.client.scan_iter(match=pattern, count=max(batch_size, 1000)):
                if kind == "group" and key.endswith(CHORD_SUFFIXES):
                    self.counts["chord_keys_skipped"] += 1
                    continue
                keys.append(key)
                if len(keys) >= batch_size:
                    yield load(keys)
                    keys = []
            if keys:
                yield load(keys)
        except redis.RedisError as exc:
            raise self._error("reading results from", exc) from exc

    def extract(self, cutoff: dt.datetime, batch_size: int, run_id: str, archived_at: dt.datetime) -> Iterator[pa.Table]:
        """Finished results older than ``cutoff`` (naive UTC), or with a TTL below the margin."""
        margin_ms = int(self.config.expiring_within.total_seconds() * 1000) if self.config.expiring_within else None
        expires_ms = int(self.config.result_expires.total_seconds() * 1000)
        now = archived_at
        for kind in ("task", "group"):
            for batch in ahead(self._scan(kind, batch_size), "celery-archive-extract"):  # next batch read meanwhile
                rows: list[tuple[Any, ...]] = []
                for key, raw, ttl in batch:
                    if raw is None:
                        continue  # expired or deleted since SCAN saw it
                    self.counts["scanned"] += 1
                    row = self._row(kind, key, raw, ttl, now, expires_ms)
                    if row is None:
                        continue
                    if ttl == -1:
                        self.counts["no_ttl"] += 1  # never expires by itself
                    expiring = margin_ms is not None and 0 <= ttl < margin_ms
                    if row[3] is None or not (row[3] < cutoff or expiring):
                        self.counts["not_due"] += 1
                        continue
                    rows.append(row)
                if rows:
                    yield assemble({**dict(zip(_ROW_FIELDS, map(list, zip(*rows)))), "storage_format": self.storage_format,
                                    "source": self.display_url, "run_id": run_id, "archived_at": archived_at}, len(rows))

    def _row(self, kind: str, key: bytes, raw: bytes, ttl: int, now: dt.datetime, expires_ms: int) -> tuple[Any, ...] | None:
        """One key's record values, in _ROW_FIELDS order, or None (reported) if not taken."""
        try:
            meta, compression, ctype, _refused = decode_value(raw, self.config.serializer)
        except Exception:  # noqa: BLE001 - anything unreadable is reported, kept, never deleted
            self.counts["not_celery"] += 1
            return None
        if not isinstance(meta, dict) or "result" not in meta or (kind == "task" and "status" not in meta):
            self.counts["not_celery"] += 1
            return None
        errors: list[str] = []
        key_text = key.decode("utf-8", "replace")
        task_id = key_text[len(self.prefix) + len(TASK_PREFIX if kind == "task" else GROUP_PREFIX):]
        if kind == "task":
            status = meta.get("status")
            if status not in FINISHED:
                self.counts["unfinished"] += 1
                return None
            try:
                date_done = utc_naive(meta.get("date_done"))
            except ValueError:
                date_done = None
        else:
            status = None
            # Celery stores no date for a saved group: it was written result_expires before it expires
            date_done = now - dt.timedelta(milliseconds=expires_ms - ttl) if ttl >= 0 else None
            if date_done is None:
                self.counts["groups_undated"] += 1
                return None
        texts = [_json(meta, f, errors) for f in ("result", "args", "kwargs", "children")]
        get = meta.get
        return (str(get("task_id") or task_id), kind, status, date_done, get("name"), get("worker"), get("retries"),
                get("queue"), get("traceback"), get("group_id"), get("parent_id"), *texts, "; ".join(errors) or None,
                raw, ctype, "binary" if ctype in _BINARY_TYPES else "utf-8", compression, key_text, ttl)

    # -- dry run --------------------------------------------------------------------------
    def stats(self, cutoff: dt.datetime, everything: bool = False) -> list[tuple[str, str | None, str | None, str, int, int]]:
        """(kind, status, name, day, count, bytes) of what a run would take, or with
        ``everything`` of every finished result (unfinished ones are in ``counts``)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        if everything:
            cutoff = dt.datetime.max
        out: list[tuple[str, str | None, str | None, str, int, int]] = []
        for table in self.extract(cutoff, 1000, "dry-run", now):
            for kind, status, name, done, raw in zip(*(table.column(c).to_pylist() for c in ("kind", "status", "name", "date_done", "raw_value"))):
                out.append((kind, status, name, done.date().isoformat(), 1, len(raw)))
        return out

    # -- purge ----------------------------------------------------------------------------
    def purge(self, batch: PurgeBatch) -> tuple[int, int]:
        """Delete each key only if it still holds exactly the archived bytes (a Lua script,
        atomic per call): (deleted, skipped because changed or gone)."""
        import redis

        table = batch.table
        script = self.client.register_script(_CAS)
        deleted = 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, table.num_rows, _CAS_CHUNK):
                chunk = table.slice(i, _CAS_CHUNK)  # Python objects for a chunk at a time only
                script(keys=chunk.column("source_table").to_pylist(), args=chunk.column("raw_value").to_pylist(), client=pipe)
                if len(pipe) >= 8:  # a few thousand keys in flight: client memory stays small
                    deleted += sum(int(n) for n in pipe.execute())
            deleted += sum(int(n) for n in pipe.execute())
        except redis.RedisError as exc:
            raise self._error("deleting archived results from", exc) from exc
        return deleted, table.num_rows - deleted
