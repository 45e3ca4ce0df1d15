"""Redis Cluster: ``redis+cluster://[:password@]host:port[,host:port...]/0`` (``rediss+cluster://``
with TLS), checked like the single-server URLs (../url.py), and the per-node script calls the
cluster source (source.py) and restore target (target.py) share.

Celery has no Redis Cluster result backend of its own; results reach a cluster through an
app's own backend, in the key layout and value encoding of Celery's RedisBackend, which is what
the single-server source reads. So the source and target here are that code with its commands
sent to the node that holds each key: SCAN on every primary (never a cluster-wide helper that
would hide which node a key came from), and every other command one key at a time (a script
call is confined to one slot), pipelined per node.

A slot that moves during resharding answers MOVED or ASK. A read that meets one leaves the key
where it is (counted ``moved``: the next run takes it); a write or compare-and-delete is sent
again through redis-py's RedisCluster, which follows the redirection to the key's node now.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from celery_archive.backends.redis.url import OPTIONS, SSL_OPTIONS, _bad, _db, _options, redact
from celery_archive.errors import ConfigError, SourceError, scrubbed

SCHEMES = ("redis+cluster", "rediss+cluster")
MOVED = object()  # the reply run_script gives, without follow, for a key whose slot moved


def parse(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes (host, port) and redis-py connection options of a cluster URL."""
    p = urlsplit(url)
    if p.scheme not in SCHEMES:
        raise ConfigError(f"not a Redis Cluster URL: {redact(url)!r} (expected redis+cluster://host:port[,host:port...]/0 "
                          "or rediss+cluster://)")
    hosts = p.netloc.rpartition("@")[2]
    nodes = []
    for part in hosts.split(","):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port:
            raise _bad(url, f"the node {part!r} is not host:port: list every seed node as host:port, "
                            "separated by commas (redis+cluster://node1:6379,node2:6379/0)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"the port of {part!r} is not a number from 1 to 65535")
        nodes.append((host.strip("[]"), int(port)))
    if _db(url, p.path, "path") != 0:
        raise _bad(url, "a Redis Cluster has database 0 only: end the URL in /0")
    tls = p.scheme == "rediss+cluster"
    opts = _options(url, p.query, {**OPTIONS, **(SSL_OPTIONS if tls else {})})
    if tls:
        opts["ssl"] = True
    opts["password"] = unquote(p.password) if p.password else None
    opts["username"] = unquote(p.username) if p.username else None
    return nodes, opts


def connect(url: str) -> Any:
    """redis-py's RedisCluster for ``url``, its slot map read from the first seed that answers;
    SourceError (the password left out) when none does or one is not a cluster node."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException

    nodes, opts = parse(url)
    try:
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **opts)  # type: ignore[no-untyped-call]
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        detail = scrubbed(exc, [opts["password"]] if opts["password"] else [])
        if isinstance(exc, redis.AuthenticationError):
            detail = f"authentication failed ({detail}): check the password in the URL"
        raise SourceError(f"connecting to the Redis Cluster {redact(url)} failed: {detail}; check that the nodes listed "
                          "are reachable and run with cluster-enabled yes") from exc


def primaries(client: Any) -> list[tuple[str, int]]:
    """(host, port) of each primary of the cluster, as its slot map names them now, in a stable
    order: what a run reads node by node, and the unit to split a run into shards by (one or more
    shards per primary, each SCANning that node only)."""
    return sorted((n.host, int(n.port)) for n in client.get_primaries())


def slot_owners(client: Any) -> dict[int, str]:
    """Slot -> the name (host:port) of the primary that serves it, as the cluster says now."""
    client.nodes_manager.initialize()
    return {slot: nodes[0].name for slot, nodes in client.nodes_manager.slots_cache.items() if nodes}


def run_script(client: Any, script: str, calls: Sequence[tuple[bytes, Sequence[Any]]], follow: bool = True,
               on_moved: Callable[[], None] | None = None) -> list[Any]:
    """The replies of ``script`` run once per (key, args) of ``calls``, in order: one pipeline per
    primary (by the slot map as the client knows it), each call confined to its key's slot. A
    call that meets MOVED or ASK (its slot moved) calls ``on_moved``; with ``follow`` it is sent
    again through the cluster client, which follows the redirection, else its reply is MOVED."""
    from redis.crc import key_slot
    from redis.exceptions import AskError, NoScriptError

    sha = hashlib.sha1(script.encode()).hexdigest()
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, (key, _args) in enumerate(calls):
        node = client.nodes_manager.get_node_from_slot(key_slot(key))
        groups.setdefault(node.name, (node, []))[1].append(i)
    replies: list[Any] = [None] * len(calls)
    again: list[int] = []
    for node, indexes in groups.values():
        conn = client.get_redis_connection(node)
        conn.script_load(script)
        pipe = conn.pipeline(transaction=False)
        for i in indexes:
            key, args = calls[i]
            pipe.execute_command("EVALSHA", sha, 1, key, *args)
        for i, reply in zip(indexes, pipe.execute(raise_on_error=False)):
            if isinstance(reply, AskError):  # MovedError is one too
                if on_moved:
                    on_moved()
                if follow:
                    again.append(i)
                else:
                    replies[i] = MOVED
            elif isinstance(reply, NoScriptError):  # a node that lost its scripts since
                again.append(i)
            elif isinstance(reply, Exception):
                raise reply
            else:
                replies[i] = reply
    for i in again:
        key, args = calls[i]
        replies[i] = client.eval(script, 1, key, *args)
    return replies
