"""Putting results back into Celery's Redis backend (the conversions: ../convert.py)."""

from __future__ import annotations

from typing import Any

from celery_archive.backends import PutReport, StorageFormat, TargetConfig, check_policy
from celery_archive.backends.convert import backend_error, convert, decoded_meta, dumps_value
from celery_archive.backends.redis.keys import full_prefix
from celery_archive.backends.redis.source import GROUP_PREFIX, TASK_PREFIX
from celery_archive.backends.redis.url import connect, redact
from celery_archive.errors import ConflictError

# SET with the TTL (or none), then PUBLISH on the key's channel as Celery's own set() does;
# with mode 'skip' an existing key is left alone. 0 skipped, 1 restored, 2 overwritten.
PUT = """
local existed = redis.call('EXISTS', KEYS[1])
if existed == 1 and ARGV[3] == 'skip' then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1 + existed
"""
_CHUNK = 1000


class RedisTarget:
    def __init__(self, cfg: TargetConfig) -> None:
        import redis

        self.cfg = cfg
        self.display_url = redact(cfg.url)
        self._secret = _secret(cfg.url)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._client = self._connect()

    def _connect(self) -> Any:
        return connect(self.cfg.url, self.cfg.master_name)

    def _value(self, rec: dict[str, Any]) -> bytes:
        if rec["storage_format"] == StorageFormat.CELERY_REDIS:
            return bytes(rec["raw_value"])
        what = f"Redis (serializer {self.cfg.serializer})"

        def build() -> bytes:
            meta = decoded_meta(rec) if rec["kind"] == "task" else {"result": decoded_meta(rec)["result"]}
            return dumps_value(meta, self.cfg.serializer)

        return bytes(convert(rec, what, build))

    def put(self, records: list[dict[str, Any]], on_conflict: str) -> PutReport:
        check_policy(on_conflict)
        items = [(redis_key(r, self.cfg.key_prefix), self._value(r)) for r in records]
        ttl_ms = int(self.cfg.ttl.total_seconds() * 1000) if self.cfg.ttl else 0
        report = PutReport()
        try:
            if on_conflict == "fail":
                taken = [k for (k, _v), n in zip(items, self._exists([k for k, _v in items])) if n]
                if taken:
                    raise ConflictError(f"{len(taken)} result(s) already in {self.display_url} (first: {taken[0].decode('utf-8', 'backslashreplace')}); "
                                        "nothing was restored: use --on-conflict skip or overwrite")
            mode = "overwrite" if on_conflict == "overwrite" else "skip"
            for i in range(0, len(items), _CHUNK):
                for outcome in self._put_each(items[i:i + _CHUNK], ttl_ms, mode):
                    if outcome == 0:
                        report.skipped += 1
                    else:
                        report.restored += 1
                        report.overwritten += outcome == 2
        except self._errors as exc:
            raise backend_error(self.display_url, "restoring into", exc, self._secret) from exc
        return report

    def _exists(self, keys: list[bytes]) -> list[int]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [int(n) for n in pipe.execute()]

    def _put_each(self, items: list[tuple[bytes, bytes]], ttl_ms: int, mode: str) -> list[int]:
        """PUT of each (key, value), pipelined: 0 skipped, 1 restored, 2 overwritten."""
        script = self._client.register_script(PUT)
        pipe = self._client.pipeline(transaction=False)
        for key, value in items:
            script(keys=[key], args=[value, ttl_ms, mode], client=pipe)
        return [int(n) for n in pipe.execute()]

    def close(self) -> None:
        self._client.close()


def _secret(url: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    pw = urlsplit(url.split(";")[0]).password
    return unquote(pw) if pw else None


def redis_key(rec: dict[str, Any], key_prefix: str) -> bytes:
    """The key a record goes back under: for a result archived from Redis its original key,
    byte for byte (raw_key; record schema v1 files have only its text, source_table)."""
    if rec["storage_format"] == StorageFormat.CELERY_REDIS and rec.get("raw_key"):
        return bytes(rec["raw_key"])
    if rec["storage_format"] == StorageFormat.CELERY_REDIS and rec["source_table"]:
        return str(rec["source_table"]).encode()  # the original key, with the app's global prefix
    prefix = GROUP_PREFIX if rec["kind"] == "group" else TASK_PREFIX
    return f"{full_prefix(key_prefix)}{prefix}{rec['task_id']}".encode()


def from_config(cfg: TargetConfig) -> RedisTarget:
    return RedisTarget(cfg)
