"""A directory on local disk: temp file, fsync, then a hard link that never overwrites."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from celery_archive.errors import ConfigError, ObjectExistsError, ObjectNotFoundError, SinkError, disk_error
from celery_archive.sinks.base import ObjectInfo

if TYPE_CHECKING:
    from celery_archive.crypto import Encryption

_TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalSink:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.encryption: Encryption | None = None  # the URL's encrypt= (sinks/__init__.py)
        for path in (self.root, *self.root.parents):  # the nearest that exists must be a directory
            if path.exists():
                if not path.is_dir():
                    where = "is" if path == self.root else f"is inside {path}, which is"
                    raise ConfigError(f"--sink {self.root} {where} a file, not a directory: give a directory "
                                      "(it is made if it does not exist yet)")
                break

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise SinkError(f"invalid object key {key!r}")
        return self.root / key

    def _commit(self, key: str, write: Callable[[BinaryIO], object]) -> ObjectInfo:
        target = self._path(key)
        if target.exists():
            raise ObjectExistsError(f"{target} already exists; archive objects are never overwritten")
        import uuid  # here, as hashlib: a reader needs neither

        tmp = target.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{target.name}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, target)  # atomic, and fails rather than replace
            except FileExistsError as exc:
                raise ObjectExistsError(f"{target} already exists; archive objects are never overwritten") from exc
            _fsync_dir(target.parent)
        except OSError as exc:
            raise disk_error("writing", target, exc) from exc
        finally:
            with contextlib.suppress(OSError):  # the error above (if any) says what went wrong
                tmp.unlink(missing_ok=True)
        return ObjectInfo(key, target.stat().st_size)

    def put(self, key: str, path: Path, sha256: str | None = None) -> ObjectInfo:
        if self._link(key, path):
            return ObjectInfo(key, self._path(key).stat().st_size)

        def write(out: BinaryIO) -> None:
            import hashlib

            h = hashlib.sha256()
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            if sha256 and h.hexdigest() != sha256:
                raise SinkError(f"{path} no longer matches the SHA-256 taken when it was written; "
                                f"nothing was stored as {key}, run again")

        return self._commit(key, write)

    def _link(self, key: str, path: Path) -> bool:
        """Store ``path`` by hard link when it is on the sink's filesystem (no copy); the
        caller's file must not change afterwards (the pipeline's spool files never do)."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as src:
                os.fsync(src.fileno())
            os.link(path, target)
        except FileExistsError as exc:
            raise ObjectExistsError(f"{target} already exists; archive objects are never overwritten") from exc
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return False  # another filesystem, or links not allowed: copy instead
            raise disk_error("writing", target, exc) from exc
        _fsync_dir(target.parent)
        return True

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._commit(key, lambda out: out.write(data))

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{path} is not in the archive") from exc
        except OSError as exc:
            raise disk_error("reading", path, exc) from exc

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        with self.open(key) as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            return ObjectInfo(key, path.stat().st_size)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{path} is not in the archive") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        found: list[ObjectInfo] = []
        # walk only the directory the prefix names (index lookups list index/log/, not data/)
        top = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        for dirpath, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP_PREFIX)]  # staging areas
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, os.path.getsize(os.path.join(dirpath, name))))
        yield from sorted(found, key=lambda o: o.key)

    def spool_root(self) -> Path:
        return self.root / f"{_TMP_PREFIX}spool"

    def sweep(self, older_than: float) -> int:
        """Temp files of puts that died (kill -9) and staging directories no live process uses."""
        import time

        from celery_archive.spool import sweep as sweep_spools

        removed = sweep_spools(self.spool_root()) if self.spool_root().is_dir() else 0
        if not self.root.is_dir():
            return removed
        limit = time.time() - older_than
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP_PREFIX)]  # the spool: swept above
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if name.startswith(_TMP_PREFIX) and os.stat(path).st_mtime < limit:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def erase(self, key: str) -> None:
        self.delete(key)  # a directory keeps no versions

    def retention(self, key: str) -> str | None:
        return None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise disk_error("deleting", path, exc) from exc

