"""One archiver per backend: a run holds the backend's archiver lock from before it reads
anything until it has finished, so a second archiver of the same tables or keys (to another
archive, from another host) is refused instead of archiving every result a second time.

Each backend's own mechanism, released by the server when the holder's connection or process
dies: PostgreSQL ``pg_try_advisory_lock`` and MySQL/MariaDB ``GET_LOCK`` on a connection of the
lock's own; SQLite an exclusive ``flock`` on the database file (SQLite's own locks are POSIX
record locks, which flock does not touch); Redis a key set with NX and a TTL that a thread renews.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from celery_archive.errors import LockError, SourceError

REDIS_TTL_MS = 60_000
_log = logging.getLogger(__name__)


def lock_name(what: str) -> str:
    """A short, stable name for the tables or keys a run archives."""
    return "celery-archive:" + hashlib.sha256(what.encode()).hexdigest()[:24]


Check = Callable[[], None]  # raises LeaseLostError if the lock was lost


def _kept() -> None:
    """A lock the server holds for as long as its connection lives: not lost while the run is."""


@contextmanager
def held(source_url: str, what: str, holder: dict[str, Any], client: Any = None, ttl_s: float = REDIS_TTL_MS / 1000) -> Iterator[Check]:
    """Hold the archiver lock of ``what`` (the tables or key patterns, as ``Source.describe``
    names them) on the backend at ``source_url``; ``client`` is the source's Redis client.
    Raises LockError naming the holder where the backend can tell. Yields the lock's check,
    for the run's fence: a Redis lock expires if the run is paused longer than ``ttl_s``."""
    scheme = source_url.split("://", 1)[0]
    if client is not None:  # keys live per Redis database: the client's
        with _redis(client, lock_name(what), holder, int(ttl_s * 1000)) as check:
            yield check
        return
    from celery_archive.backends.sql.url import parse_source_url

    url = parse_source_url("db+" + source_url.split("+", 1)[1] if scheme.startswith("django+") else source_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        with _flock(str(url.database)):
            yield _kept
        return
    from celery_archive.backends.sql.url import adbc_uri

    name = lock_name(f"{url.database}/{what}")  # MySQL's locks are server-wide
    uri = adbc_uri(url)
    with _adbc(url, uri, name) if uri else _sql(url, backend, name):
        yield _kept


@contextmanager
def _flock(path: str) -> Iterator[None]:
    import fcntl

    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockError(f"another celery-archive run is archiving {path} (it holds the database file's archiver lock); "
                            "run one archiver per backend, or wait for it to finish") from exc
        yield


def _pg_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _taken(url: Any, name: str) -> LockError:
    return LockError(f"another celery-archive run is archiving these tables of {url.render_as_string(hide_password=True)} "
                     f"(it holds the archiver lock {name}); run one archiver per backend, or wait for it to finish")


@contextmanager
def _adbc(url: Any, uri: str, name: str) -> Iterator[None]:
    """PostgreSQL's advisory lock on an ADBC connection of its own (the source reads through
    ADBC: no second driver to load for the lock)."""
    import adbc_driver_manager

    from celery_archive.backends.sql.adbc import connect
    from celery_archive.errors import scrubbed

    try:
        conn = connect(uri)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT pg_try_advisory_lock({_pg_key(name)})")
                row = cur.fetchone()
            conn.commit()  # a session's advisory lock outlives the transaction it was taken in
        except BaseException:
            conn.close()
            raise
    except adbc_driver_manager.Error as exc:
        raise SourceError(f"taking the archiver lock on {url.render_as_string(hide_password=True)} failed: "
                          f"{scrubbed(exc, [url.password])}") from exc
    try:
        if not (row and row[0]):
            raise _taken(url, name)
        yield  # held while this connection lives; the server drops it with the connection
    finally:
        conn.close()


@contextmanager
def _sql(url: Any, backend: str, name: str) -> Iterator[None]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _pg_key(name)}).scalar()
            elif backend in ("mysql", "mariadb"):
                got = conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name[:64]}).scalar() == 1
            else:
                got = True  # no lock this database offers: one archiver per backend is the user's to keep
            conn.commit()
            if not got:
                raise _taken(url, name)
            yield  # held while this connection lives; the server drops it with the connection
    except sa.exc.SQLAlchemyError as exc:
        from celery_archive.errors import scrubbed

        raise SourceError(f"taking the archiver lock on {url.render_as_string(hide_password=True)} failed: "
                          f"{scrubbed(exc, [url.password])}") from exc
    finally:
        engine.dispose()


_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@contextmanager
def _redis(client: Any, name: str, holder: dict[str, Any], ttl_ms: int) -> Iterator[Check]:
    """A key set with NX and a TTL of ``ttl_ms``, renewed by a thread every sixth of it. A run
    paused past the TTL (SIGSTOP, a frozen VM) may find another run holding it: its check then
    raises, before the run commits or deletes anything more."""
    import redis

    from celery_archive.errors import LeaseLostError

    value = orjson.dumps({**holder, "host": socket.gethostname(), "pid": os.getpid()})
    try:
        if not client.set(name, value, nx=True, px=ttl_ms):
            other = client.get(name)
            raise LockError(f"another celery-archive run is archiving this Redis backend ({(other or b'?')[:300].decode(errors='replace')}); "
                            f"run one archiver per backend, or wait for it to finish (a dead one's lock {name} expires "
                            f"{ttl_ms / 1000:g} s after its last renewal: --lease-ttl)")
    except redis.RedisError as exc:
        raise SourceError(f"taking the archiver lock in Redis failed: {exc}") from exc
    stop = threading.Event()
    state = {"confirmed": time.monotonic(), "lost": False}
    guard = threading.Lock()

    def renew(wait: bool = True) -> None:
        if not guard.acquire(blocking=wait):
            return  # the thread's renewal is under way (a slow reply): the check goes by the last one
        try:
            if state["lost"]:
                return
            sent = time.monotonic()  # the TTL runs from when Redis got it, not from the reply
            if int(client.eval(_RENEW, 1, name, value, ttl_ms)) == 1:
                state["confirmed"] = sent
            else:
                state["lost"] = True  # expired, and perhaps another run's since
        finally:
            guard.release()

    def renewing() -> None:
        while not stop.wait(ttl_ms / 6000):
            try:
                renew()
            except redis.RedisError:
                continue  # the next attempt may get through; the key lives for the TTL

    def check() -> None:
        if not state["lost"] and time.monotonic() - float(state["confirmed"]) >= ttl_ms / 3000:
            try:
                renew(wait=False)
            except redis.RedisError:
                pass
        waited = time.monotonic() - float(state["confirmed"])
        if state["lost"] or waited >= ttl_ms / 2000:
            raise LeaseLostError(f"this run lost the archiver lock {name} of the Redis backend (not renewed for {waited:.0f} s: "
                                 "paused, or cut off from Redis; another run may have taken it since); it stopped before "
                                 "committing or deleting anything more (nothing unverified was deleted): run again")

    thread = threading.Thread(target=renewing, name="celery-archive-source-lock", daemon=True)
    thread.start()
    try:
        yield check
    finally:
        stop.set()
        thread.join()
        try:
            client.eval(_RELEASE, 1, name, value)
        except redis.RedisError as exc:
            _log.warning("celery-archive: could not release the archiver lock %s (it expires by itself): %s", name, exc)
