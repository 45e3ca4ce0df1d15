"""Celery's Redis result backend as a source: SCAN (never KEYS), pipelined GET and PTTL,
safe decoding of each stored meta, and a compare-and-delete that removes a key only while it
still holds the exact bytes that were archived and verified."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from celery_archive.ahead import ahead
from celery_archive.backends import PurgeBatch, StorageFormat
from celery_archive.backends.codec import SERIALIZERS, TooLarge, UnsafePayload, decode_value, split_compressed, to_json_text
from celery_archive.backends.records import assemble, utc_naive
from celery_archive.backends.redis import fast
from celery_archive.backends.redis.keys import key_prefixes, purged_keys
from celery_archive.backends.redis.scripts import CAS, CAS_CHUNK, READ, READ_CHUNK, WRONG_TYPE
from celery_archive.backends.redis.url import connect, redact
from celery_archive.errors import ConfigError, SourceError, scrubbed

if TYPE_CHECKING:
    from celery_archive.config import RunConfig
from celery_archive.schemas import arrow_schema

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")
TASK_PREFIX, GROUP_PREFIX = "celery-task-meta-", "celery-taskset-meta-"
CHORD_SUFFIXES = (b".j", b".t", b".s", b".d", b".c")  # chord bookkeeping on group keys: never touched


@dataclass(frozen=True)
class RedisSourceConfig:
    url: str
    serializer: str = "json"  # result_serializer
    key_prefix: str = ""  # result_backend_transport_options["global_keyprefix"]
    expiring_within: dt.timedelta | None = None  # also take results whose TTL is below this
    result_expires: dt.timedelta = dt.timedelta(days=1)  # the app's; dates groups (Celery stores none)
    master_name: str | None = None  # sentinel: result_backend_transport_options["master_name"]


_ROW_FIELDS = ("task_id", "kind", "status", "date_done", "name", "worker", "retries", "queue", "traceback", "group_id",
               "parent_id", "result", "args", "kwargs", "children", "decode_error", "raw_value", "content_type",
               "content_encoding", "compression", "source_table", "ttl_ms", "raw_key")
_KEY = len(_ROW_FIELDS) - 1  # raw_key: the exact key bytes
EXAMPLES = 5  # keys named per reason a key was left alone
LEFT_ALONE = {  # source_counts of keys a run neither archives nor deletes, and why
    "not_celery": "hold values that are not Celery results",
    "wrong_type": "hold a hash, list, set, sorted set or stream, not a Celery result (a string)",
    "bad_date": "have a date_done that is not ISO 8601 text, as Celery writes it (2026-01-31T12:00:00+00:00)",
    "malformed": "have a field of a type Celery never writes (a task name that is a number, ...)",
    "undated": "are finished results with neither a date_done nor a TTL: their age cannot be known",
    "groups_undated": "are saved groups without a TTL: Celery stores no date for them, so their age cannot be known",
    "moved": "were on a Redis Cluster slot that moved during the run (resharding; counted where seen): the next run takes them",
}
_BINARY_TYPES = (SERIALIZERS["pickle"][0], SERIALIZERS["msgpack"][0])
_JSON = SERIALIZERS["json"][0]


def _stored(raw: bytes, ctype: str, compression: str | None, key: bytes, ttl: int) -> tuple[Any, ...]:
    """A row's last fields, what the key holds as stored: raw_value to raw_key in _ROW_FIELDS."""
    return raw, ctype, "binary" if ctype in _BINARY_TYPES else "utf-8", compression, key.decode("utf-8", "replace"), ttl, key


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
    storage_format = StorageFormat.CELERY_REDIS
    purge_columns: tuple[str, ...] = ("source_table", "raw_key", "raw_value")
    # compare-and-delete goes CAS_CHUNK keys a call whatever the batch: a bigger batch would
    # only hold more archived values in memory (50,000 of them and the next batch read ahead:
    # ~55 MiB of a run's peak)
    purge_rows: int | None = 10_000
    # not while SCAN goes on: deletes shrink Redis's table, and SCAN then returns keys it
    # returned before, which a later part would archive again (3 of 1,000,000 in a measured run)
    purge_alongside: bool = False

    def __init__(self, config: RedisSourceConfig) -> None:
        if config.serializer not in SERIALIZERS:
            raise ConfigError(f"unknown --serializer {config.serializer!r}")
        self.config = config
        self.display_url = redact(config.url)
        self._secrets = [unquote(p.password) for p in map(urlsplit, config.url.split(";")) if p.password]
        self.prefixes = key_prefixes(config.key_prefix)
        self.prefix = self.prefixes[0]
        self.client = self._connect()
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}  # reason -> the first few keys left alone for it
        self.warnings: list[str] = []
        self._newest: dict[dt.datetime | None, tuple[str, str, dt.datetime] | None] = {}

    def _connect(self) -> Any:
        return connect(self.config.url, self.config.master_name)

    def describe_dates(self) -> dict[str, object]:
        return {"task": {"zone": None, "known": True, "rule": "ISO text in the value, with its offset (Celery 5.4+: +00:00, "
                                                           "5.5+: the app's); without one (Celery 5.3): UTC"},
                "group": {"zone": None, "known": True, "rule": "none stored: result_expires less the key's remaining TTL"}}

    def newest(self, cutoff: dt.datetime | None) -> tuple[str, str, dt.datetime] | None:
        if cutoff not in self._newest:
            self.stats(cutoff or dt.datetime.max, everything=cutoff is None)
        return self._newest.get(cutoff)

    def _error(self, action: str, exc: Exception) -> SourceError:
        import redis

        detail = scrubbed(exc, self._secrets)
        if isinstance(exc, redis.AuthenticationError):  # redis-py's type for the WRONGPASS and NOAUTH replies
            detail = f"authentication failed ({detail}): check the password in --source"
        elif isinstance(exc, redis.ResponseError) and "DB index is out of range" in str(exc):
            # Redis has no code of its own for this (the generic ERR): its text is all there is
            detail = f"{detail}: the database number in --source does not exist on this server"
        return SourceError(f"{action} {self.display_url} failed: {detail}")

    def open(self) -> None:
        import redis

        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise self._error("connecting to", exc) from exc

    def describe(self) -> dict[str, str]:
        out = {"task": f"{self.prefix}{TASK_PREFIX}*", "group": f"{self.prefix}{GROUP_PREFIX}*"}
        if len(self.prefixes) > 1:  # Celery 5.3/5.4's layout too
            out.update({"task_celery_5.3": f"{self.prefixes[1]}{TASK_PREFIX}*", "group_celery_5.3": f"{self.prefixes[1]}{GROUP_PREFIX}*"})
        return out

    def close(self) -> None:
        self.client.close()

    # -- reading ----------------------------------------------------------------------------
    def _scan(self, kind: str, batch_size: int) -> Iterator[list[tuple[bytes, bytes | None, int]]]:
        """(key, value, pttl) in batches: SCAN of each node, then pipelined GET and PTTL per batch."""
        import redis

        patterns = [f"{p}{TASK_PREFIX if kind == 'task' else GROUP_PREFIX}*" for p in self.prefixes]
        try:
            for node, client in self._nodes():
                keys: list[bytes] = []
                for pattern in patterns:
                    for key in client.scan_iter(match=pattern, count=max(batch_size, 1000)):
                        if kind == "group" and key.endswith(CHORD_SUFFIXES):
                            self.counts["chord_keys_skipped"] += 1
                        elif self._takes(node, key):
                            keys.append(key)
                        if len(keys) >= batch_size:
                            yield self._load(client, keys)
                            keys = []
                if keys:
                    yield self._load(client, keys)
        except redis.RedisError as exc:
            raise self._error("reading results from", exc) from exc

    def _nodes(self) -> list[tuple[str, Any]]:
        """(name, client) of each node whose keys SCAN lists: the one server here."""
        return [("", self.client)]

    def _takes(self, node: str, key: bytes) -> bool:
        """Whether ``key``, listed by ``node``'s SCAN, is read there (always, on one server)."""
        return True

    def _load(self, client: Any, batch: list[bytes]) -> list[tuple[bytes, bytes | None, int]]:
        """GET and PTTL of each key, in one script call per chunk, the calls pipelined."""
        read = client.register_script(READ)
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(batch), READ_CHUNK):
            read(keys=batch[i : i + READ_CHUNK], client=pipe)
        replies = [item for reply in pipe.execute() for item in reply]
        return list(zip(batch, replies[0::2], replies[1::2]))

    def _skip(self, reason: str, key: bytes, what: str = "") -> None:
        """Count a key left alone for ``reason`` (source_counts) and keep a few of them to name."""
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(key.decode("utf-8", "backslashreplace") + (f" ({what})" if what else ""))

    def extract(self, cutoff: dt.datetime, batch_size: int, run_id: str, archived_at: dt.datetime) -> Iterator[pa.Table]:
        """Finished results older than ``cutoff`` (naive UTC), or with a TTL below the margin."""
        margin_ms = int(self.config.expiring_within.total_seconds() * 1000) if self.config.expiring_within else None
        expires_ms = int(self.config.result_expires.total_seconds() * 1000)
        now = archived_at
        for kind in ("task", "group"):
            for batch in ahead(self._scan(kind, batch_size), "celery-archive-extract"):  # next batch read meanwhile
                rows: list[tuple[Any, ...]] = []
                for key, raw, ttl in batch:
                    if ttl == WRONG_TYPE:
                        self._skip("wrong_type", key, f"a {raw.decode()}" if raw else "")
                        continue
                    if raw is None:
                        continue  # expired or deleted since SCAN saw it
                    self.counts["scanned"] += 1
                    row = self._row(kind, key, raw, ttl, now, expires_ms)
                    if row is None:
                        continue
                    if ttl == -1:
                        self.counts["no_ttl"] += 1  # never expires by itself
                    expiring = margin_ms is not None and 0 <= ttl < margin_ms
                    if not (row[3] < cutoff or expiring):
                        self.counts["not_due"] += 1
                        continue
                    rows.append(row)
                if rows:
                    yield self._table(rows, run_id, archived_at)

    def _table(self, rows: list[tuple[Any, ...]], run_id: str, archived_at: dt.datetime) -> pa.Table:
        """The batch's record table. A value Arrow refuses for its column (a name that is a
        number, a retries count that is text: no Celery writes them) drops its row, counted
        as malformed; the rest of the batch goes on."""
        const = {"storage_format": self.storage_format, "source": self.display_url, "run_id": run_id, "archived_at": archived_at}
        try:
            return assemble({**dict(zip(_ROW_FIELDS, map(list, zip(*rows)))), **const}, len(rows))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        schema, bad = arrow_schema(), set()
        for name, values in zip(_ROW_FIELDS, zip(*rows)):
            try:
                pa.array(values, schema.field(name).type)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                for i, v in enumerate(values):
                    try:
                        pa.array([v], schema.field(name).type)
                    except (pa.ArrowException, TypeError, ValueError, OverflowError):
                        bad.add(i)
                        self._skip("malformed", rows[i][_KEY], f"{name} is {type(v).__name__} {v!r:.40}")
        rows = [r for i, r in enumerate(rows) if i not in bad]
        return assemble({**dict(zip(_ROW_FIELDS, map(list, zip(*rows)))), **const}, len(rows))

    def _date(self, kind: str, meta: dict[str, Any], key: bytes, ttl: int, now: dt.datetime, expires_ms: int) -> dt.datetime | None:
        """When the result was stored (naive UTC), or None (counted) when that cannot be known.

        A task's date_done, as Celery writes it (ISO 8601 text); where there is none (a saved
        group: Celery stores no date; a task whose meta lacks one), the date its TTL implies:
        Redis was told result_expires when it was written, so it was written result_expires
        less the TTL left ago (never later than now). A date_done that is not ISO 8601 text (a
        number, say: no Celery writes one) is not guessed at: bad_date, left alone."""
        stored = meta.get("date_done") if kind == "task" else None
        if stored is not None:
            if isinstance(stored, str):
                try:
                    done: dt.datetime = utc_naive(stored)
                    return done
                except (ValueError, OverflowError):
                    pass
            self._skip("bad_date", key, f"date_done {stored!r:.40}")
            return None
        if ttl >= 0:
            return min(now, now - dt.timedelta(milliseconds=expires_ms - ttl))
        self._skip("groups_undated" if kind == "group" else "undated", key)
        return None

    def _row(self, kind: str, key: bytes, raw: bytes, ttl: int, now: dt.datetime, expires_ms: int) -> tuple[Any, ...] | None:
        """One key's record values, in _ROW_FIELDS order, or None (reported) if not taken."""
        plain = fast.task(raw) if kind == "task" and self.config.serializer == "json" else None
        if plain is not None:  # the common case, in one pass (fast.py)
            if plain[1] not in FINISHED:
                self.counts["unfinished"] += 1
                return None
            task_id = self._id_of(kind, key, plain[0])
            date_done = None if task_id is None else self._date(kind, {"date_done": plain[2]}, key, ttl, now, expires_ms)
            return None if date_done is None else (
                task_id, kind, plain[1], date_done, *plain[3:], None, *_stored(raw, _JSON, None, key, ttl))
        try:
            meta, compression, ctype, _refused = decode_value(raw, self.config.serializer)
        except TooLarge as exc:
            return self._not_inflated(kind, key, raw, ttl, now, expires_ms, exc)
        except Exception:  # noqa: BLE001 - anything unreadable is reported, kept, never deleted
            self._skip("not_celery", key)
            return None
        if not isinstance(meta, dict) or "result" not in meta or (kind == "task" and "status" not in meta):
            self._skip("not_celery", key)
            return None
        status = meta.get("status") if kind == "task" else None
        if kind == "task" and status not in FINISHED:
            self.counts["unfinished"] += 1
            return None
        stored_id = meta.get("task_id")
        if stored_id is not None and not isinstance(stored_id, str):
            self._skip("malformed", key, f"task_id is {type(stored_id).__name__} {stored_id!r:.40}")
            return None
        task_id = self._id_of(kind, key, stored_id)
        date_done = None if task_id is None else self._date(kind, meta, key, ttl, now, expires_ms)
        if task_id is None or date_done is None:
            return None
        errors: list[str] = []
        texts = [_json(meta, f, errors) for f in ("result", "args", "kwargs", "children")]
        get = meta.get
        return (task_id, kind, status, date_done, get("name"), get("worker"), get("retries"),
                get("queue"), get("traceback"), get("group_id"), get("parent_id"), *texts, "; ".join(errors) or None,
                *_stored(raw, ctype, compression, key, ttl))

    def _id_of(self, kind: str, key: bytes, stored: str | None) -> str | None:
        """The result's id: the one in its key, which the value's own task_id (where it has
        one) must match; a value naming another id (written there by hand: it would be archived,
        and found by restore, as that other result) is left alone, malformed."""
        task_id = self._task_id(kind, key)
        if stored and stored != task_id:
            self._skip("malformed", key, f"task_id {stored!r:.40} is not the key's")
            return None
        return task_id

    def _task_id(self, kind: str, key: bytes) -> str:
        """The id in a key of either prefix layout (Celery 5.5+'s, or 5.3/5.4's extra ``_``)."""
        text = key.decode("utf-8", "replace")
        base = TASK_PREFIX if kind == "task" else GROUP_PREFIX
        layout = next((p for p in self.prefixes if text.startswith(p + base)), self.prefix)
        return text[len(layout) + len(base):]

    def _not_inflated(self, kind: str, key: bytes, raw: bytes, ttl: int, now: dt.datetime, expires_ms: int,
                      exc: TooLarge) -> tuple[Any, ...] | None:
        """A value that would inflate beyond MAX_INFLATED (a decompression bomb, or a giant
        result): archived as it is stored, its status unknown (null), dated from its TTL, with
        a decode_error; restore puts the very bytes back."""
        date_done = self._date(kind, {}, key, ttl, now, expires_ms)
        if date_done is None:
            return None
        self.counts["not_inflated"] += 1
        ctype = SERIALIZERS[self.config.serializer][0]
        return (self._task_id(kind, key), kind, None, date_done, *([None] * 11), f"value: {exc}; status unknown, dated from its TTL",
                *_stored(raw, ctype, split_compressed(raw)[0], key, ttl))

    # -- dry run --------------------------------------------------------------------------
    def stats(self, cutoff: dt.datetime, everything: bool = False) -> list[tuple[str, str | None, str | None, str, int, int]]:
        """(kind, status, name, day, count, bytes) of what a run would take, or with
        ``everything`` of every finished result (unfinished ones are in ``counts``)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        if everything:
            cutoff = dt.datetime.max
        out: list[tuple[str, str | None, str | None, str, int, int]] = []
        newest: tuple[str, str, dt.datetime] | None = None
        for table in self.extract(cutoff, 1000, "dry-run", now):
            columns = ("task_id", "kind", "status", "name", "date_done", "raw_value")
            for tid, kind, status, name, done, raw in zip(*(table.column(c).to_pylist() for c in columns)):
                out.append((kind, status, name, done.date().isoformat(), 1, len(raw)))
                if kind == "task" and (newest is None or done > newest[2]):
                    newest = (tid, _stored_date(raw, self.config.serializer), done)
        self._newest[None if everything else cutoff] = newest
        return out

    # -- purge ----------------------------------------------------------------------------
    def purge(self, batch: PurgeBatch) -> tuple[int, int]:
        """Delete each key only if it still holds exactly the archived bytes (a Lua script,
        atomic per call): (deleted, skipped because changed or gone)."""
        import redis

        table = batch.table
        script = self.client.register_script(CAS)
        deleted = 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, table.num_rows, CAS_CHUNK):
                chunk = table.slice(i, CAS_CHUNK)  # Python objects for a chunk at a time only
                script(keys=purged_keys(chunk).to_pylist(), args=chunk.column("raw_value").to_pylist(), client=pipe)
                if len(pipe) >= 8:  # a few thousand keys in flight: client memory stays small
                    deleted += sum(int(n) for n in pipe.execute())
            deleted += sum(int(n) for n in pipe.execute())
        except redis.RedisError as exc:
            raise self._error("deleting archived results from", exc) from exc
        return deleted, table.num_rows - deleted


def _stored_date(raw: bytes, serializer: str) -> str:
    """The date_done text inside a stored value (for dry runs' and stats' newest result)."""
    try:
        meta = decode_value(raw, serializer)[0]
    except Exception:  # noqa: BLE001 - it was decoded once already; this is only for display
        return ""
    return str(meta.get("date_done") or "") if isinstance(meta, dict) else ""


def from_config(cfg: RunConfig) -> RedisSource:
    return RedisSource(RedisSourceConfig(cfg.source, cfg.serializer, cfg.key_prefix, cfg.expiring_within,
                                         cfg.result_expires, cfg.master_name))
