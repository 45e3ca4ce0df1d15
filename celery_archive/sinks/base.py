"""Archive storage behind one small contract, picked by URL scheme.

Every sink keeps write-once objects under string keys (``/``-separated, relative to the
sink's root). The contract, which ``tests/test_sink_contract.py`` checks for every sink:

* ``put(key, path)`` / ``put_bytes(key, data)`` store an object only if ``key`` does not
  exist yet; otherwise they raise :class:`ObjectExistsError` and change nothing. A reader
  never sees a partly written object: it is either absent or complete. ``put(..., sha256=)``
  is the digest taken when the file was written: a sink that copies the bytes refuses to
  store others (S3 sends it as the object's checksum; the local sink checks while copying,
  and a hard link stores the very bytes that were hashed).
* ``open(key)`` returns a seekable binary file with the object's bytes.
* ``read(key, start, length)`` returns ``length`` bytes from offset ``start`` (all the rest
  when ``length`` is None) in one request: the unit restore counts as one object read.
* ``stat(key)`` returns its :class:`ObjectInfo`; a missing key raises
  :class:`ObjectNotFoundError` (as ``open`` does).
* ``list(prefix)`` yields every complete object whose key starts with ``prefix``, in key order.
* ``delete(key)`` removes an object; deleting a missing key is not an error.
* ``erase(key)`` removes an object and every earlier version the store keeps of it (a
  versioned bucket keeps the bytes of a plain delete); a missing key is not an error. For
  ``forget`` and ``prune``, whose promise is that no byte is left.
* ``retention(key)`` says why ``erase(key)`` would be refused now (an S3 Object Lock
  retain-until date, a legal hold), or None when nothing holds it (or the key is missing).
* ``url`` is the sink's location for messages and manifests, with no secret in it.
* ``encryption`` is the URL's ``encrypt=`` master key (``crypto.Encryption``), or None: data
  files are then written in clear (and only files that are not encrypted can be read).
* ``spool_root()`` names a directory on the sink's own filesystem where a run may stage
  files (so that ``put`` can link rather than copy), or None for a remote sink. Nothing
  under it is ever listed.
* ``sweep(older_than)`` removes what writers that died mid-write left behind and that no
  reader ever sees (partial temp files, unfinished multipart uploads) started more than
  ``older_than`` seconds ago; returns how many. Only the holder of the archive's lease calls it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, Protocol

if TYPE_CHECKING:
    from celery_archive.crypto import Encryption


class ObjectInfo(NamedTuple):  # not a dataclass: its import costs a CLI restore's start-up ~5 ms (inspect)
    key: str
    size: int


class Sink(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def encryption(self) -> Encryption | None: ...

    def put(self, key: str, path: Path, sha256: str | None = None) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    def open(self, key: str) -> BinaryIO: ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def erase(self, key: str) -> None: ...

    def retention(self, key: str) -> str | None: ...

    def spool_root(self) -> Path | None: ...

    def sweep(self, older_than: float) -> int: ...


def download(sink: Sink, key: str, dest: Path) -> tuple[int, str]:
    """Copy an object to the local file ``dest`` in 1 MiB chunks: (bytes, sha256 hex)."""
    import hashlib  # here: its OpenSSL costs a CLI restore's start-up ~3 ms, and a lookup needs none

    h, size = hashlib.sha256(), 0
    with sink.open(key) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, h.hexdigest()


class RangeReader(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes whose reads are served by
    ``read_at(offset, length)``: ranged requests, or ranges fetched earlier."""

    def __init__(self, size: int, read_at: Callable[[int, int], bytes]) -> None:
        self._size, self._read_at, self._pos = size, read_at, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._size + pos
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._read_at(self._pos, n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)
