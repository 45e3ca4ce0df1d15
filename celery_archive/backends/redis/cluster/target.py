"""Putting results back into a Redis Cluster: the single-server target (../target.py: the key,
the bytes, the TTL, the PUBLISH Celery's get() waits on) with each key's script run on the
primary that serves its slot, following MOVED or ASK if the slot moves meanwhile."""

from __future__ import annotations

from typing import Any

from celery_archive.backends import TargetConfig
from celery_archive.backends.redis import cluster
from celery_archive.backends.redis.target import PUT, RedisTarget

_EXISTS = "return redis.call('EXISTS', KEYS[1])"


class RedisClusterTarget(RedisTarget):
    def _connect(self) -> Any:
        from redis.exceptions import RedisClusterException

        self._errors = (*self._errors, RedisClusterException)
        return None  # RedisCluster reads the slot map when made: made on first use

    def _cluster(self) -> Any:
        if self._client is None:
            self._client = cluster.connect(self.cfg.url)
        return self._client

    def _exists(self, keys: list[bytes]) -> list[int]:
        return [int(n) for n in cluster.run_script(self._cluster(), _EXISTS, [(key, ()) for key in keys])]

    def _put_each(self, items: list[tuple[bytes, bytes]], ttl_ms: int, mode: str) -> list[int]:
        calls = [(key, (value, ttl_ms, mode)) for key, value in items]
        return [int(n) for n in cluster.run_script(self._cluster(), PUT, calls)]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def from_config(cfg: TargetConfig) -> RedisClusterTarget:
    return RedisClusterTarget(cfg)
