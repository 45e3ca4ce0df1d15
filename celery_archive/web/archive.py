"""What the pages read from the archive: results by id (through the restore index), ids by
prefix, runs with their manifests and reports. Everything is read through one
:class:`CachedSink`; nothing here can change the archive."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import DATA
from celery_archive.errors import ObjectNotFoundError
from celery_archive.index.packs import PACKS, state
from celery_archive.restore.search import find
from celery_archive.web.cache import CachedSink

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.sinks import Sink


def shown_url(url: str) -> str:
    """The sink URL with any user, password or key removed from its location (``s3://KEY:SECRET@bucket``)."""
    parts = urlsplit(url)
    if parts.scheme and len(parts.scheme) > 1 and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def secrets_of(url: str) -> list[str]:
    """The parts of a sink URL that must never be shown (its user-info, and each half of it)."""
    parts = urlsplit(url)
    if not (parts.scheme and len(parts.scheme) > 1 and "@" in parts.netloc):
        return []
    info = parts.netloc.rsplit("@", 1)[0]
    out = [info, *info.split(":", 1)]
    from urllib.parse import unquote

    out += [unquote(s) for s in out]
    return sorted({s for s in out if s}, key=len, reverse=True)


@dataclass(frozen=True)
class Run:
    """A committed run as ``celery-archive runs --json`` lists it, with its report's figures."""

    run_id: str
    created_at: str
    source: str
    cutoff: str
    files: int
    rows: int
    bytes: int
    state: str  # purged | kept (--no-delete) | pending (purge not finished)
    deleted: int | None
    verified: int | None  # results read back and checked before the commit (from the run report)
    skipped_changed: int | None
    finished_at: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Totals:
    runs: int
    results: int
    files: int
    bytes: int
    oldest: str | None  # date_done of the oldest archived result
    newest: str | None


class IdIndex:
    """Every task id in the restore index, sorted, for prefix search; made again when the
    index changes (a run added its file, a compaction made a new generation)."""

    def __init__(self, cached: CachedSink) -> None:
        self._cached, self._lock = cached, threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._ids: pa.Array | None = None

    def ids(self) -> pa.Array:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        with self._lock:
            st = state(self._cached)
            sig = (st.generation, st.buckets, st.deltas)
            if self._ids is not None and sig == self._signature:
                return self._ids
            inner: Sink = self._cached.inner  # read once, past the byte cache
            keys = [o.key for o in inner.list(f"{PACKS}{st.generation:06d}/")] if st.generation else []
            parts = []
            for key in [*keys, *st.deltas]:
                try:
                    parts.append(pq.read_table(pa.BufferReader(inner.read(key)), columns=["task_id"], use_threads=False).column("task_id"))
                except ObjectNotFoundError:
                    self._cached.forget_listings()
                    raise
            arr = pc.unique(pa.chunked_array(parts, pa.string()).combine_chunks()) if parts else pa.array([], pa.string())
            self._ids, self._signature = arr.take(pc.sort_indices(arr)), sig
            return self._ids

    def prefixed(self, prefix: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` ids that start with ``prefix``, sorted; True if there are more."""
        ids = self.ids()
        lo, hi = 0, len(ids)
        while lo < hi:  # the first id >= prefix
            mid = (lo + hi) // 2
            if ids[mid].as_py() < prefix:
                lo = mid + 1
            else:
                hi = mid
        out = [t for t in ids.slice(lo, limit + 1).to_pylist() if t.startswith(prefix)]
        return out[:limit], len(out) > limit


class Archive:
    """The archive at ``url`` as the pages see it."""

    def __init__(self, sink: Sink, url: str, refresh: float = 10.0, cache_bytes: int = 256 << 20) -> None:
        self.url = shown_url(url)
        self.secrets = secrets_of(url)
        self.sink = CachedSink(sink, self.url, refresh, cache_bytes)
        self.refresh = refresh
        self.id_index = IdIndex(self.sink)
        self._manifests: dict[str, dict[str, Any]] = {}
        self._runs: tuple[float, list[Run], Totals] | None = None
        self._lock = threading.Lock()

    def is_empty(self) -> bool:
        """No committed run and no data file: not an archive (yet)."""
        return not self.runs() and not any(True for _ in self.sink.list(DATA))

    def results(self, task_id: str) -> list[dict[str, Any]]:
        """The archived records of ``task_id`` (one per kind), newest run's copy; [] if unknown."""
        return find(self.sink, [task_id]).records

    def manifest(self, run_id: str) -> dict[str, Any]:
        # the latest revision (forget and prune add revisions), from the sink's cached listing
        key = mf.latest_manifests(self.sink).get(run_id) or mf.manifest_key(run_id)
        m = self._manifests.get(key)
        if m is None:  # write-once: a revision read once is that revision
            m = self._manifests[key] = mf.load_manifest(self.sink, run_id, key).to_json()
        return m

    def runs(self) -> list[Run]:
        """Committed runs, oldest first (as ``celery-archive runs`` lists them)."""
        return self._catalog()[1]

    def totals(self) -> Totals:
        return self._catalog()[2]

    def _catalog(self) -> tuple[float, list[Run], Totals]:
        with self._lock:
            if self._runs is not None and time.monotonic() - self._runs[0] < self.refresh:
                return self._runs
            reports = mf.reports(self.sink)
            out = []
            for run_id in mf.committed_runs(self.sink):
                m, r = self.manifest(run_id), reports.get(run_id)
                run_state = "pending" if r is None else ("purged" if r.purged else "kept")
                out.append(Run(run_id, m["created_at"], m["source"], m["cutoff"], m["totals"]["files"], m["totals"]["rows"],
                               m["totals"]["bytes"], run_state, None if r is None else r.deleted,
                               None if r is None else r.verified, None if r is None else r.skipped_changed,
                               (r.finished_at or None) if r is not None else None))
            self._runs = (time.monotonic(), out, self._totals(out))
            return self._runs

    def run(self, run_id: str) -> tuple[Run, dict[str, Any]] | None:
        for r in self.runs():
            if r.run_id == run_id:
                return r, self.manifest(run_id)
        return None

    def _totals(self, runs: list[Run]) -> Totals:
        dates = [(f["min_date_done"], f["max_date_done"]) for r in runs for f in self.manifest(r.run_id)["files"]]
        return Totals(len(runs), sum(r.rows for r in runs), sum(r.files for r in runs), sum(r.bytes for r in runs),
                      min((d[0] for d in dates), default=None), max((d[1] for d in dates), default=None))
