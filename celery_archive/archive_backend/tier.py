"""The archive as a second tier behind a live result backend: finds the newest archived
record of an id through the cached restore index, remembers misses briefly, and never lets
an unreachable or damaged archive break the caller: the problem is logged once (what failed,
what to do, no secret) and the id is answered as not archived."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery_archive.archive.layout import run_id_of
from celery_archive.errors import ArchiveError, scrubbed
from celery_archive.sinks import open_sink

from .cache import MissCache
from .index_cache import IndexCache
from .remote import fail_fast
from .rows import RowCache
from .settings import ArchiveSettings

if TYPE_CHECKING:
    from celery_archive.sinks import Sink

log = logging.getLogger("celery_archive.archive_backend")


class ArchiveTier:
    def __init__(self, settings: ArchiveSettings, sink: Sink | None = None) -> None:
        self.settings = settings
        # a bad URL is a ConfigError now; a remote archive gets short timeouts
        self.sink = sink if sink is not None else fail_fast(open_sink(settings.sink), settings.timeout)
        self.index = IndexCache(self.sink, settings.index_cache_bytes, settings.index_refresh, settings.relist_after)
        self.rows = RowCache(self.sink, settings.cache_bytes)
        self.misses = {"task": MissCache(settings.miss_ttl), "group": MissCache(settings.miss_ttl)}
        self._warned: set[str] = set()
        self._down_until = 0.0
        self._lock = threading.Lock()

    def warn_once(self, problem: str, message: str) -> None:
        with self._lock:
            if problem in self._warned:
                return
            self._warned.add(problem)
        log.warning("celery-archive: %s", message)

    def _failed(self, problem: str, what: str, exc: BaseException, back_off: bool = True) -> None:
        detail = scrubbed(exc, _secrets())
        if isinstance(exc, ArchiveError):
            message = f"{what}: {detail}"
        else:
            message = (f"{what}: the archive at {self.sink.url} could not be read ({type(exc).__name__}: {detail}); "
                       "results only the archive holds read as PENDING until it is back: check archive_sink, the "
                       "network and the credentials")
        self.warn_once(problem, f"{message} (the live backend's answer stands)")
        if back_off:
            self._down_until = time.monotonic() + self.settings.retry_after

    def entries(self, task_id: str, kind: str) -> list[dict[str, Any]]:
        if task_id in self.misses[kind] or time.monotonic() < self._down_until:
            return []
        try:
            found = self.index.entries(task_id, kind)
        except Exception as exc:  # noqa: BLE001 - whatever the sink raises, the live answer stands
            self._failed(f"index:{type(exc).__name__}", f"looking up {kind} {task_id} in the archive's index", exc)
            return []
        if not found:
            self.misses[kind].add(task_id)
        return found

    def record(self, task_id: str, kind: str = "task") -> dict[str, Any] | None:
        """The newest archived record of ``task_id`` (a run archiving it again wins), or None."""
        found = self.entries(task_id, kind)
        if not found:
            return None
        entry = max(found, key=lambda e: run_id_of(e["key"]))
        try:
            return self.rows.record(entry)
        except Exception as exc:  # noqa: BLE001 - a missing or damaged data file: warn once per file
            self._failed(f"data:{entry['key']}", f"reading {kind} {task_id} from data file {entry['key']} "
                         f"(`celery-archive verify --sink {self.sink.url}` says what is missing or damaged)", exc, back_off=False)
            return None


def _secrets() -> list[str | None]:
    import os

    return [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
