"""The archive's lease: the one run that may commit, purge or delete anything in an archive.

    locks/lease-<version>.json     the latest version says who holds the lease, or that it is free

Each version is a create-only object, so taking version n+1 succeeds for exactly one writer:
renewal, takeover and release are compare-and-swaps built from the sink contract alone (a hard
link on local disk, ``If-None-Match: *`` on S3), whatever host or PID namespace the runs are in.

Staleness is measured, never inferred from a process id: a lease is stale only when no new
version has appeared for its ``ttl`` while the run that wants it watched (its own monotonic
clock). The holder renews every ttl/6 and acts only while its last renewal began less than
ttl/2 ago (:meth:`Lease.check`, the fence before every commit, purge and delete), so a holder
that cannot renew stops acting long before anyone may take over. A lease removed by hand, or
taken over, is noticed at the next renewal: the run then stops before its next commit or delete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import orjson

from celery_archive.archive.layout import LEASE_PREFIX, LEGACY_LOCK, lease_key
from celery_archive.errors import ArchiveError, LeaseLostError, LockError, ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.sinks import ObjectInfo, Sink

if TYPE_CHECKING:
    from celery_archive.crypto import Encryption

PREFIX, LEGACY = LEASE_PREFIX, LEGACY_LOCK  # (LEGACY: celery-archive 0.1's lock, judged by its pid: never taken over)
DEFAULT_TTL = 60.0
MIN_TTL = 1.0
_log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> dt.datetime: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Version:
    number: int
    body: dict[str, Any]  # {} when it could not be parsed

    @property
    def free(self) -> bool:
        return self.body.get("state") == "free"

    def describe(self) -> str:
        b = self.body
        if not b:
            return "an unreadable lease"
        return (f"run {b.get('run_id')} (pid {b.get('pid')} on {b.get('host')}, renewed at {b.get('renewed_at')}, "
                f"stale after {b.get('ttl_seconds')} s without renewal)")


def _ttl(v: Version, fallback: float) -> float:
    """The holder's own ttl (the one it fences itself by), at least MIN_TTL."""
    try:
        return max(float(v.body.get("ttl_seconds") or fallback), MIN_TTL)
    except (TypeError, ValueError):
        return max(fallback, MIN_TTL)


def _key(number: int) -> str:
    return lease_key(number)


class Lease:
    """Take with :meth:`acquire`; :meth:`check` before every change; :meth:`release` at the end."""

    def __init__(self, sink: Sink, run_id: str, ttl: float = DEFAULT_TTL, clock: Clock | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        if ttl < MIN_TTL:
            raise ValueError(f"the lease's ttl must be at least {MIN_TTL} s")
        self.sink, self.run_id, self.ttl = sink, run_id, float(ttl)
        self.clock: Clock = clock or SystemClock()
        self.on_wait = on_wait
        self.token = secrets.token_hex(16)
        self.version: int | None = None
        self._confirmed = 0.0  # monotonic time at which the last successful renewal began
        self._lost: str | None = None
        self._problem: str | None = None  # why the last renewal failed, if it did
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.also: list[Callable[[], None]] = []  # more fences the run holds (the backend's archiver lock)

    # -- reading ---------------------------------------------------------------------------
    def _versions(self) -> list[int]:
        out = []
        for o in self.sink.list(PREFIX):
            digits = o.key[len(PREFIX):].removesuffix(".json")
            if digits.isdigit():
                out.append(int(digits))
        return sorted(out)

    def latest(self) -> Version | None:
        """The newest version of the lease, or None if there is none."""
        for _attempt in range(5):
            numbers = self._versions()
            if not numbers:
                return None
            try:
                data = self.sink.read(_key(numbers[-1]))
            except ObjectNotFoundError:
                continue  # replaced meanwhile: list again
            try:
                body = orjson.loads(data)
            except orjson.JSONDecodeError:
                body = {}
            return Version(numbers[-1], body if isinstance(body, dict) else {})
        raise LockError(f"the lease in {self.sink.url} kept changing while it was read; try again")

    def _body(self, state: str) -> bytes:
        return orjson.dumps({
            "state": state, "run_id": self.run_id, "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
            "renewed_at": self.clock.now().isoformat(), "ttl_seconds": self.ttl,
        })

    def _create(self, number: int, state: str) -> bool:
        try:
            self.sink.put_bytes(_key(number), self._body(state))
        except ObjectExistsError:
            return False
        return True

    def _mine(self, v: Version | None) -> bool:
        return v is not None and v.number == self.version and v.body.get("token") == self.token

    # -- taking it -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease, or raise LockError naming who holds it. A held lease is watched for
        its holder's ttl: a renewal meanwhile means its holder lives (LockError); none means it
        is stale, and it is taken over."""
        self._refuse_legacy()
        watched: Version | None = None
        since = 0.0
        while True:
            cur = self.latest()
            if cur is None:
                number = 0
            elif cur.free:
                number = cur.number + 1
            else:
                if watched is not None and cur.number != watched.number:
                    raise LockError(f"{cur.describe()} holds the lease on {self.sink.url}: it renewed it while this run "
                                    "waited, so it is alive; run again when it has finished")
                ttl = _ttl(cur, self.ttl)
                if watched is None:  # its holder's clock and process id prove nothing here: only a renewal does
                    watched, since = cur, self.clock.monotonic()
                    if self.on_wait is not None:
                        self.on_wait(f"the lease on {self.sink.url} is held by {cur.describe()}; watching it for up to "
                                     f"{ttl:.0f} s: a live run renews it (this run then stops), a dead one's is taken over")
                left = ttl - (self.clock.monotonic() - since)
                if left > 0:
                    self.clock.sleep(min(left, max(ttl / 6, 0.05)))
                    continue
                number = cur.number + 1
            began = self.clock.monotonic()
            if not self._create(number, "held"):
                raise LockError(f"another run took the lease on {self.sink.url} just now; run again when it has finished")
            self.version = number
            if not self._mine(self.latest()):  # a lease re-created by hand beside this one: the newest wins
                self.version = None
                raise LockError(f"the lease on {self.sink.url} changed while this run took it; run again")
            self._confirmed = began
            self._prune()
            self._thread = threading.Thread(target=self._renew_loop, name="celery-archive-lease", daemon=True)
            self._thread.start()
            return

    def _refuse_legacy(self) -> None:
        try:
            data = self.sink.read(LEGACY)
        except ObjectNotFoundError:
            return
        raise LockError(f"{self.sink.url} has a lock of celery-archive 0.1 ({LEGACY}: {data[:200].decode(errors='replace')}); "
                        "that version's runs cannot share the archive with this one: stop them, then delete that file")

    # -- keeping it ------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 6):
            self.renew()
            if self._lost:
                return

    def renew(self) -> None:
        """Write the next version if the current one is still this run's; otherwise the lease
        is lost for good. A failure to reach the sink leaves it unconfirmed (check() decides)."""
        with self._mutex:
            if self._lost or self.version is None:
                return
            began = self.clock.monotonic()
            try:
                cur = self.latest()
                if not self._mine(cur):
                    self._lose("it was taken over or removed" if cur is not None else "it was removed from the archive")
                    return
                if not self._create(self.version + 1, "held"):
                    self._lose("another run took it over")
                    return
            except ArchiveError as exc:
                self._problem = str(exc)
                _log.warning("celery-archive: could not renew the lease on %s: %s", self.sink.url, exc)
                return
            self.version += 1
            self._confirmed = began
            self._problem = None
            self._prune()

    def _lose(self, why: str) -> None:
        self._lost = f"run {self.run_id} lost the lease on {self.sink.url}: {why}"
        _log.warning("celery-archive: %s", self._lost)

    def _prune(self) -> None:
        """Remove versions older than the current one (never the current: a version number
        must not be taken twice)."""
        try:
            for n in self._versions():
                if self.version is not None and n < self.version:
                    self.sink.delete(_key(n))
        except SinkError as exc:
            _log.warning("celery-archive: could not remove old lease versions in %s: %s", self.sink.url, exc)

    def check(self) -> None:
        """The fence: raise LeaseLostError unless this run holds the lease and renewed it less
        than ttl/2 ago (renewing first if the last renewal is getting old)."""
        if self._lost is None and self.clock.monotonic() - self._confirmed >= self.ttl / 3:
            self.renew()
        if self._lost is not None:
            raise LeaseLostError(f"{self._lost}; it stopped before changing anything more (what it verified and "
                                 "committed stays in the archive, nothing unverified was deleted): run again")
        waited = self.clock.monotonic() - self._confirmed
        if self.version is None or waited >= self.ttl / 2:
            raise LeaseLostError(f"run {self.run_id} could not renew the lease on {self.sink.url} for {waited:.0f} s "
                                 f"({self._problem or 'no answer'}); it stopped before changing anything more: run again")
        for check in self.also:
            check()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Acquired on entry, released on exit. A holder whose lease was taken over while it
        was paused (a frozen VM, SIGSTOP) fails in whatever it touches next (its files cleaned
        up by the run that took over): that failure is the takeover's consequence, and is
        reported as the takeover (LeaseLostError, exit 4), not as a missing file."""
        self.acquire()
        try:
            yield
        except Exception as exc:
            if isinstance(exc, LeaseLostError):
                raise
            self.renew()  # one more look at the sink: was it taken over or removed?
            if self._lost is not None:
                raise LeaseLostError(f"{self._lost}; it stopped before changing anything more: run again "
                                     f"(it then failed with: {exc})") from exc
            raise
        finally:
            self.release()

    @property
    def held(self) -> bool:
        return self.version is not None and self._lost is None

    def release(self) -> None:
        """Mark the lease free (a new version), if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self.version is None or self._lost:
                return
            try:
                if self._mine(self.latest()) and self._create(self.version + 1, "free"):
                    self.version += 1
                    self._prune()
            except SinkError as exc:
                _log.warning("celery-archive: could not release the lease on %s (it goes stale by itself): %s", self.sink.url, exc)
            self.version = None


class Fence(Protocol):
    def check(self) -> None: ...  # raises LeaseLostError unless the run still holds the lease


class FencedSink:
    """A sink as a lease holder writes to it: every put and delete checks the lease first, so a
    run that lost it changes nothing more in the archive."""

    def __init__(self, sink: Sink, lease: Fence) -> None:
        self.inner, self.lease = sink, lease

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def encryption(self) -> Encryption | None:
        return self.inner.encryption

    def put(self, key: str, path: Path, sha256: str | None = None) -> ObjectInfo:
        self.lease.check()
        return self.inner.put(key, path, sha256)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self.lease.check()
        return self.inner.put_bytes(key, data)

    def delete(self, key: str) -> None:
        self.lease.check()
        self.inner.delete(key)

    def erase(self, key: str) -> None:
        self.lease.check()
        self.inner.erase(key)

    def retention(self, key: str) -> str | None:
        return self.inner.retention(key)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return self.inner.read(key, start, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def spool_root(self) -> Path | None:
        return self.inner.spool_root()

    def sweep(self, older_than: float) -> int:
        self.lease.check()
        return self.inner.sweep(older_than)
