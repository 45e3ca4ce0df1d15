"""A Redis Cluster holding Celery's RedisBackend keys, as a source: the single-server source
(../source.py: decoding, dating, what is left alone and why) with its commands sent node by node.

Each kind's scan fixes the slot map when it starts and takes a key only from the primary that
served its slot then, so a key that moves during the run (resharding) is read at most once:
listed by a node that no longer owns its slot, or answering MOVED/ASK when read, it is counted
``moved`` and left where it is, for the next run. The compare-and-delete runs on the key's node
now, following a redirection if its slot moved after it was read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery_archive.backends import PurgeBatch
from celery_archive.backends.redis import cluster
from celery_archive.backends.redis.keys import purged_keys
from celery_archive.backends.redis.scripts import CAS, CAS_CHUNK, READ
from celery_archive.backends.redis.source import RedisSource, RedisSourceConfig
from celery_archive.backends.shard import Shard
from celery_archive.errors import SourceError

if TYPE_CHECKING:
    from celery_archive.config import RunConfig


class RedisClusterSource(RedisSource):
    """Celery's Redis results on a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""

    purge_alongside = False  # the client's node tables change under MOVED replies: one thread uses it

    def _connect(self) -> Any:
        self._owner: dict[int, str] = {}
        self._fixed: dict[int, str] | None = None  # restrict(): the slot map as the run read it when it began
        return None  # RedisCluster reads the slot map when made: open() makes it

    def open(self) -> None:
        import redis

        self.client = cluster.connect(self.config.url)
        for host, port in self.primaries():
            try:
                self.client.get_redis_connection(self.client.get_node(host, port)).ping()
            except redis.RedisError as exc:
                raise self._error(f"connecting to the primary {host}:{port} of", exc) from exc

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def primaries(self) -> list[tuple[str, int]]:
        """(host, port) of every primary: a run SCANs each; a shard may cover one (or part of one)."""
        return cluster.primaries(self.client)

    def shards(self, cutoff: Any, n: int) -> list[Shard]:
        """At most ``n`` shards, each the keys of one or more primaries (never part of one), with
        the slot map read now: each shard takes a key only where its slot lived when the run
        began, so a slot that moves between two shards' scans is taken by one of them at most."""
        owners = self._slot_map()
        nodes = sorted(set(owners.values()))
        k = max(1, min(n, len(nodes)))
        return [Shard(i, k, keys=tuple(f"{node} {_ranges(owners, node)}" for node in nodes[i::k])) for i in range(k)]

    def restrict(self, shard: Shard) -> None:
        self._fixed = {}
        for entry in shard.keys:
            node, ranges = entry.split(" ", 1)
            for part in filter(None, ranges.split(",")):
                lo, _, hi = part.partition("-")
                self._fixed.update(dict.fromkeys(range(int(lo), int(hi or lo) + 1), node))

    def _slot_map(self) -> dict[int, str]:
        from redis.exceptions import RedisClusterException

        try:
            return cluster.slot_owners(self.client)
        except RedisClusterException as exc:  # redis-py's own, outside its RedisError tree
            raise SourceError(f"reading the slot map of {self.display_url} failed: {exc}") from exc

    def _nodes(self) -> list[tuple[str, Any]]:
        from redis.exceptions import RedisClusterException

        self._owner = self._slot_map() if self._fixed is None else self._fixed  # fixed for this scan: one home a key
        mine = set(self._owner.values())
        try:
            return [(node.name, self.client.get_redis_connection(node)) for node in
                    sorted(self.client.get_primaries(), key=lambda n: n.name) if node.name in mine]
        except RedisClusterException as exc:
            raise SourceError(f"reading the slot map of {self.display_url} failed: {exc}") from exc

    def _takes(self, node: str, key: bytes) -> bool:
        from redis.crc import key_slot

        if self._owner.get(key_slot(key)) == node:
            return True
        self.counts["moved"] += 1  # its slot was another node's when this scan began: not read here
        return False

    def _moved(self) -> None:
        self.counts["moved"] += 1

    def _load(self, client: Any, batch: list[bytes]) -> list[tuple[bytes, bytes | None, int]]:
        """Value and TTL of each key: one READ call per key, pipelined per node; a key whose
        slot moved since SCAN listed it is left out (counted)."""
        from redis.exceptions import RedisClusterException

        try:
            replies = cluster.run_script(self.client, READ, [(key, ()) for key in batch], follow=False, on_moved=self._moved)
        except RedisClusterException as exc:  # a slot no primary serves now, ...: redis-py's own, outside RedisError
            raise self._error("reading results from", exc) from exc
        return [(key, reply[0], reply[1]) for key, reply in zip(batch, replies) if reply is not cluster.MOVED]

    def purge(self, batch: PurgeBatch) -> tuple[int, int]:
        """Compare-and-delete of each key on its node (a key moved since it was read is
        followed there, counted ``moved_at_purge``): (deleted, skipped because changed or gone)."""
        import redis
        from redis.exceptions import RedisClusterException

        table = batch.table
        deleted = 0

        def moved() -> None:
            self.counts["moved_at_purge"] += 1

        try:
            for i in range(0, table.num_rows, CAS_CHUNK):
                chunk = table.slice(i, CAS_CHUNK)
                calls = list(zip(purged_keys(chunk).to_pylist(), ([v] for v in chunk.column("raw_value").to_pylist())))
                deleted += sum(int(n) for n in cluster.run_script(self.client, CAS, calls, on_moved=moved))
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._error("deleting archived results from", exc) from exc
        return deleted, table.num_rows - deleted


def _ranges(owners: dict[int, str], node: str) -> str:
    """``node``'s slots as ``a-b,c,d-e``."""
    slots, out = sorted(s for s, n in owners.items() if n == node), list[list[int]]()
    for slot in slots:
        if out and out[-1][1] == slot - 1:
            out[-1][1] = slot
        else:
            out.append([slot, slot])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in out)


def from_config(cfg: RunConfig) -> RedisClusterSource:
    return RedisClusterSource(RedisSourceConfig(cfg.source, cfg.serializer, cfg.key_prefix, cfg.expiring_within,
                                                cfg.result_expires))
