"""The restore index, cached: the listing of ``index/log/`` (trusted for ``refresh`` seconds,
listed again at once when an id is not found and the listing is older than ``relist_after``),
and the index objects it names (run files and packs, write-once, so they never go stale) kept
parsed in a bounded LRU. A warm lookup reads nothing; an id the archive does not hold costs at
most one listing per ``relist_after`` and one read of the pack its bucket is in."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from celery_archive.archive.layout import pack_key
from celery_archive.errors import ObjectNotFoundError, SinkError
from celery_archive.index.packs import bucket_of, state

from .cache import ByteLRU

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.index.packs import IndexState
    from celery_archive.sinks import Sink


class IndexCache:
    def __init__(self, sink: Sink, budget: int, refresh: float, relist_after: float) -> None:
        self.sink, self.refresh, self.relist_after = sink, refresh, relist_after
        self._tables: ByteLRU[str, pa.Table] = ByteLRU(budget)
        self._state: IndexState | None = None
        self._listed_at = 0.0
        self._lock = threading.Lock()

    def _current(self, force: bool = False) -> IndexState:
        with self._lock:
            if force or self._state is None or time.monotonic() - self._listed_at > self.refresh:
                self._state = state(self.sink)
                self._listed_at = time.monotonic()
            return self._state

    def _table(self, key: str) -> pa.Table:
        def load() -> tuple[pa.Table, int]:
            import pyarrow as pa
            import pyarrow.parquet as pq

            data = self.sink.read(key)
            try:
                t = pq.read_table(pa.BufferReader(data), use_threads=False)
            except (pa.ArrowException, OSError) as exc:
                raise SinkError(f"the restore index object {key} in {self.sink.url} is damaged ({str(exc).splitlines()[0]}): "
                                f"`celery-archive index rebuild --sink {self.sink.url}` makes the index again") from exc
            return t, max(int(t.nbytes), 1)

        return self._tables.get_or_load(key, load)

    def _search(self, st: IndexState, task_id: str, kind: str) -> list[dict[str, Any]]:
        import pyarrow.compute as pc

        keys = list(st.deltas)
        if st.generation:
            keys.append(pack_key(st.generation, st.buckets, bucket_of(task_id, st.buckets)))
        found: list[dict[str, Any]] = []
        for key in keys:
            t = self._table(key)
            hits = t.filter(pc.equal(t.column("task_id"), task_id))
            for row in hits.to_pylist():
                if row["kind"] == kind and row not in found:
                    found.append(row)
        return found

    def entries(self, task_id: str, kind: str = "task") -> list[dict[str, Any]]:
        """Every index entry of ``task_id`` (as ``kind``), in no particular order."""
        st = self._current()
        for _attempt in range(3):
            try:
                found = self._search(st, task_id, kind)
                if found or time.monotonic() - self._listed_at <= self.relist_after:
                    return found
                fresh = self._current(force=True)  # a run may have committed since: look at what it added
                if fresh == st:
                    return found
                st = fresh
                return self._search(st, task_id, kind)
            except ObjectNotFoundError:
                st = self._current(force=True)  # a compaction replaced what was listed
        raise SinkError(f"the index of {self.sink.url} kept changing while being read")

    def holds(self, task_id: str, kind: str = "task") -> bool:
        return bool(self.entries(task_id, kind))
