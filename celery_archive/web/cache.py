"""A read-only sink for the web pages that keeps what it read in memory.

Every archive object is write-once (the sink contract), so a byte range read once is the same
forever: reads are kept in a least-recently-used cache bounded in bytes. Only listings change
(a new run, a compaction): they are kept for ``refresh`` seconds, and dropped at once when an
object listed there has gone (a compaction replaced it), so a lookup that raced a compaction
lists again. This is the in-process restore index cache: the packs, run files and data file
footers a lookup reads stay here, and ``find`` costs no storage request once they are warm.

Nothing can be written through it: ``put``, ``put_bytes``, ``delete`` and ``sweep`` raise.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from celery_archive.errors import ObjectNotFoundError, SinkError

if TYPE_CHECKING:
    from celery_archive.crypto import Encryption
    from celery_archive.sinks import ObjectInfo, Sink


class ReadOnlyError(SinkError):
    """Something tried to change the archive through the web server's read-only sink."""


class CachedSink:
    """``sink`` read through a byte-bounded LRU (reads) and a ``refresh``-second cache (listings).
    ``url`` is ``shown_url``: the location without any secret, for messages."""

    def __init__(self, sink: Sink, shown_url: str, refresh: float = 10.0, max_bytes: int = 256 << 20,
                 max_object: int = 16 << 20) -> None:
        self.inner, self._url, self.refresh = sink, shown_url, refresh
        self.max_bytes, self.max_object = max_bytes, max_object
        self._reads: OrderedDict[tuple[str, int, int | None], bytes] = OrderedDict()
        self._lists: dict[str, tuple[float, list[ObjectInfo]]] = {}
        self._held = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def url(self) -> str:
        return self._url

    @property
    def encryption(self) -> Encryption | None:
        return self.inner.encryption

    def forget_listings(self) -> None:
        with self._lock:
            self._lists.clear()

    def _cached(self, k: tuple[str, int, int | None]) -> bytes | None:
        with self._lock:
            data = self._reads.get(k)
            if data is not None:
                self._reads.move_to_end(k)
                self.hits += 1
            else:
                self.misses += 1
            return data

    def _keep(self, k: tuple[str, int, int | None], data: bytes) -> None:
        if len(data) > self.max_object:
            return
        with self._lock:
            if k in self._reads:
                return
            self._reads[k] = data
            self._held += len(data)
            while self._held > self.max_bytes and self._reads:
                _, old = self._reads.popitem(last=False)
                self._held -= len(old)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        k = (key, start, length)
        data = self._cached(k)
        if data is None:
            try:
                data = self.inner.read(key, start, length)
            except ObjectNotFoundError:
                self.forget_listings()  # what was listed has gone: the next listing is fresh
                raise
            self._keep(k, data)
        return data

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        now = time.monotonic()
        with self._lock:
            hit = self._lists.get(prefix)
        if hit is None or now - hit[0] >= self.refresh:
            hit = (now, list(self.inner.list(prefix)))
            with self._lock:
                self._lists[prefix] = hit
        return iter(hit[1])

    def spool_root(self) -> Path | None:
        return None

    def put(self, key: str, path: Path, sha256: str | None = None) -> ObjectInfo:
        raise ReadOnlyError(f"the web server is read-only: it does not store {key}")

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        raise ReadOnlyError(f"the web server is read-only: it does not store {key}")

    def delete(self, key: str) -> None:
        raise ReadOnlyError(f"the web server is read-only: it does not delete {key}")

    def erase(self, key: str) -> None:
        raise ReadOnlyError(f"the web server is read-only: it does not erase {key}")

    def retention(self, key: str) -> str | None:
        return self.inner.retention(key)

    def sweep(self, older_than: float) -> int:
        raise ReadOnlyError("the web server is read-only: it does not sweep the archive")
