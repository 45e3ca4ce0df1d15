"""The restore index: task id -> (data file, block, byte range), so that restore reads one
small range instead of scanning the archive. It is a cache: the data files are the truth,
and ``rebuild`` makes it again from them alone.

    index/log/run-<run_id>.parquet          one per run (entries of that run's files)
    index/log/packs-<gen>-<buckets>.ok      commits pack generation <gen> (empty object)
    index/packs/<gen>/<bucket>.parquet      compacted entries, by crc32(task_id) % buckets

A lookup lists ``index/log/`` once, reads each run file listed there (none right after a
compaction), then the one pack holding the id: after compaction, one object read before
the data file's footer and block. Compaction merges the run files and the current packs
into a new generation, commits it with its marker, then deletes what it merged; every
object stays write-once, and a reader that raced a compaction simply lists again.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from celery_archive.archive.layout import INDEX_LOG, INDEX_PACKS, delta_key, pack_key, pack_marker_key, run_id_of, run_of_delta
from celery_archive.errors import ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.formats import locate_batches
from celery_archive.formats.entries import index_schema
from celery_archive.sinks import download

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.archive import manifest as mf
    from celery_archive.sinks import Sink

LOG, PACKS = INDEX_LOG, INDEX_PACKS
COMPACT_AFTER = 8  # a run compacts the index once this many run files wait in the log
_MAX_PACKS = 4096  # beyond 4096 x 4096 entries the packs grow instead
_PER_PACK = 4096  # entries per pack aimed at (a pack stays small: one read, quick to parse)


def bucket_of(task_id: str, buckets: int) -> int:
    return zlib.crc32(task_id.encode()) % buckets


class IndexState(NamedTuple):  # NamedTuples, not dataclasses: a lookup need not import those (sinks/base.py)
    generation: int  # 0: never compacted
    buckets: int
    deltas: tuple[str, ...]  # run files in the log, not yet compacted
    markers: tuple[str, ...]


def state(sink: Sink) -> IndexState:
    """What the index holds, from one listing of ``index/log/``."""
    deltas, markers = [], []
    gen, buckets = 0, 0
    for o in sink.list(LOG):
        name = o.key[len(LOG):]
        if name.startswith("run-") and name.endswith(".parquet"):
            deltas.append(o.key)
        elif name.startswith("packs-") and name.endswith(".ok"):
            markers.append(o.key)
            g, b = name[len("packs-"):-len(".ok")].split("-")
            if int(g) > gen:
                gen, buckets = int(g), int(b)
    return IndexState(gen, buckets, tuple(deltas), tuple(markers))


def _read(sink: Sink, key: str) -> pa.Table:
    import pyarrow as pa

    from celery_archive.formats.parquet import reader

    data = sink.read(key)
    try:  # not read_table: that loads pyarrow.dataset (~25 ms of a CLI restore's start-up), nor pyarrow.parquet
        table: pa.Table = reader(pa.BufferReader(data)).read_all(use_threads=False)
        return table
    except (pa.ArrowException, OSError) as exc:
        raise damaged_index(sink, key, exc) from exc


def damaged_index(sink: Sink, key: str, exc: Exception) -> SinkError:
    return SinkError(f"the restore index object {key} in {sink.url} is damaged ({str(exc).splitlines()[0]}): "
                     f"`celery-archive index rebuild --sink {sink.url}` makes the index again from the data files")


def lookup(sink: Sink, task_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every index entry for each of ``task_ids`` (an id may be in several runs); ids not in
    the index are absent from the answer."""
    import pyarrow as pa

    wanted = sorted(set(task_ids))
    before: IndexState | None = None
    for _attempt in range(3):
        st = state(sink)
        try:
            tables = [_read(sink, key) for key in st.deltas]
            if st.generation:
                for b in sorted({bucket_of(t, st.buckets) for t in wanted}):
                    tables.append(_read(sink, pack_key(st.generation, st.buckets, b)))
        except ObjectNotFoundError as exc:
            if st == before:  # listed twice the same: no compaction moved it, it is gone
                raise ObjectNotFoundError(f"an object of the restore index of {sink.url} is missing ({exc}): "
                                          f"`celery-archive index rebuild --sink {sink.url}` makes the index again "
                                          "from the data files") from exc
            before = st
            continue  # a compaction replaced what was listed: list again
        found: dict[str, list[dict[str, Any]]] = {}
        if tables:
            try:  # index objects of another writer's schema (a column not marked non-null, say) still read
                merged = pa.concat_tables(tables, promote_options="default")
            except (pa.ArrowException, TypeError) as exc:
                raise damaged_index(sink, "index/", exc) from exc
            for row in _matching(merged, wanted):
                if row not in found.setdefault(row["task_id"], []):
                    found[row["task_id"]].append(row)
        return found
    raise ObjectNotFoundError(f"the index of {sink.url} kept changing while being read; try again")


def _matching(t: pa.Table, wanted: list[str]) -> list[dict[str, Any]]:
    """The entries of ``t`` whose task id is one of ``wanted``. A pack (a few thousand entries)
    is searched in Python: pyarrow.compute would cost a CLI restore ~60 ms just to import."""
    if t.num_rows > 50_000:  # run files not compacted yet: many entries, the vectorised way pays
        import pyarrow as pa
        import pyarrow.compute as pc

        rows: list[dict[str, Any]] = t.filter(pc.is_in(t.column("task_id"), pa.array(wanted, pa.string()))).to_pylist()
        return rows
    want = set(wanted)
    return [t.slice(i, 1).to_pylist()[0] for i, tid in enumerate(t.column("task_id").to_pylist()) if tid in want]


def referenced_runs(sink: Sink) -> set[str]:
    """Runs that have entries in the restore index (their log file, or packs naming their
    files): a run that got this far was committed and verified, whatever else was lost."""
    import pyarrow.compute as pc

    st = state(sink)
    runs = {run_of_delta(key) for key in st.deltas}
    for key in _pack_keys(st):
        try:
            keys = _read_columns(sink, key, ["key"]).column("key")
        except ObjectNotFoundError:
            continue  # replaced by a compaction meanwhile; its entries are in the next generation
        runs.update(run_id_of(k) for k in pc.unique(keys).to_pylist())
    return runs


def indexed_files(sink: Sink, run_id: str) -> set[str]:
    """The data files of ``run_id`` its log files in the index already hold entries of (the
    parts, say shards, of a run finished before it was interrupted)."""
    out: set[str] = set()
    for key in state(sink).deltas:
        if run_of_delta(key) == run_id:
            out.update(_read_columns(sink, key, ["key"]).column("key").unique().to_pylist())
    return out


def _read_columns(sink: Sink, key: str, columns: list[str]) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.BufferReader(sink.read(key)), columns=columns, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise damaged_index(sink, key, exc) from exc


class DeltaWriter:
    """A run's log file: entries (``locate`` tables with ``key`` set) are added file by file
    as they are verified, staged in the spool, and put by ``commit``. A run file already in
    the log (a resumed run wrote it) is left as it is."""

    def __init__(self, sink: Sink, run_id: str, spool: Path, part: str | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.sink, self.run_id, self.part, self.entries = sink, run_id, part, 0
        self._path = spool / f"index-{run_id}-{part or 'all'}.parquet"
        # task ids are unique and random: no dictionary and no statistics for them (half the
        # time, a third smaller); lookups read these files whole
        self._out = pa.BufferedOutputStream(pa.OSFile(str(self._path), "wb"), buffer_size=1 << 20)
        self._writer = pq.ParquetWriter(self._out, index_schema(), compression="zstd", use_dictionary=["kind", "key"],
                                        write_statistics=False)

    def add(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(index_schema()))
        self.entries += table.num_rows

    def _close(self) -> None:
        self._writer.close()
        self._out.close()

    def commit(self) -> None:
        self._close()
        try:
            if self.part is None or self.entries:
                self.sink.put(delta_key(self.run_id, self.part), self._path)
        except ObjectExistsError:
            pass
        finally:
            self._path.unlink(missing_ok=True)

    def discard(self) -> None:
        if not self._out.closed:
            self._close()
        self._path.unlink(missing_ok=True)


class CompactReport(NamedTuple):
    generation: int
    buckets: int
    entries: int
    merged_runs: int

    def to_json(self) -> dict[str, Any]:
        return {"command": "index", "generation": self.generation, "buckets": self.buckets,
                "entries": self.entries, "merged_run_files": self.merged_runs}


def compact(sink: Sink, spool: Path, rebuilt: tuple[Iterable[pa.Table], int] | None = None) -> CompactReport:
    """Merge the log's run files and the current packs into a new pack generation (or, with
    ``rebuilt`` = (entries, how many), replace the whole index with those). Call under the
    archive's lease. Readers see the old generation until the new one's marker exists."""
    import shutil  # here: a lookup needs none of it (~3 ms of a CLI restore)

    st = state(sink)
    _drop_unfinished(sink, st)
    if rebuilt is None and not st.deltas and st.generation:
        return CompactReport(st.generation, st.buckets, _count(sink, _pack_keys(st)), 0)
    if rebuilt is not None:
        inputs, total = rebuilt
    else:
        keys = [*_pack_keys(st), *st.deltas]
        inputs, total = (_read(sink, key) for key in keys), _count(sink, keys)
    buckets = bucket_count(total)
    gen = st.generation + 1
    spooled = spool / "index-compact"
    try:
        _spool_by_bucket(inputs, buckets, spooled)
        _write_packs(sink, spooled, gen, buckets, spool)
    finally:
        shutil.rmtree(spooled, ignore_errors=True)
    sink.put_bytes(pack_marker_key(gen, buckets), b"")  # the commit point
    _retire(sink, st, gen)
    return CompactReport(gen, buckets, total, len(st.deltas))


def rewrite(sink: Sink, spool: Path, dropped_keys: set[str], added: list[pa.Table],
            drop_ids: Callable[[Any], Any] | None = None) -> CompactReport:
    """The whole index again, without the entries of the data files ``dropped_keys`` (nor, with
    ``drop_ids``, those of the task ids it marks True), with the ``added`` entries: a compaction,
    so the objects that held the old entries are retired with it (forget, prune)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    st = state(sink)
    keys = [*_pack_keys(st), *st.deltas]
    gone = pa.array(sorted(dropped_keys), pa.string())

    def inputs() -> Iterator[pa.Table]:
        for key in keys:
            t = _read(sink, key).cast(index_schema())
            keep = pc.invert(pc.is_in(t.column("key"), value_set=gone))
            if drop_ids is not None:
                keep = pc.and_(keep, pc.invert(drop_ids(t.column("task_id"))))
            yield t.filter(keep)
        yield from added

    return compact(sink, spool, rebuilt=(inputs(), _count(sink, keys) + sum(t.num_rows for t in added)))


def bucket_count(total: int) -> int:
    """Packs for ``total`` entries: a power of two from 16, about _PER_PACK entries each, at most _MAX_PACKS."""
    buckets = 16
    while buckets < _MAX_PACKS and buckets * _PER_PACK < total:
        buckets *= 2
    return buckets


def _drop_unfinished(sink: Sink, st: IndexState) -> None:
    """Packs of a compaction that died before its marker (a generation above the current)."""
    for o in sink.list(PACKS):
        if int(o.key[len(PACKS):].split("/", 1)[0]) > st.generation:
            sink.delete(o.key)


def _spool_by_bucket(inputs: Iterable[pa.Table], buckets: int, spooled: Path) -> None:
    """Every entry, spooled to local files partitioned by its bucket (memory stays one batch).
    Arrow IPC files, not Parquet: a Parquet writer holds its pages until a row group is full,
    and one is open per bucket (256 for 1,000,000 entries: +130 MiB of a run's peak RSS)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    def batches() -> Iterator[pa.RecordBatch]:
        for t in inputs:
            b = pa.array([bucket_of(x, buckets) for x in t.column("task_id").to_pylist()], pa.int32())
            yield from t.cast(index_schema()).append_column("bucket", b).to_batches()

    ds.write_dataset(batches(), spooled, schema=index_schema().append(pa.field("bucket", pa.int32())), format="ipc",
                     max_partitions=buckets, partitioning=ds.partitioning(pa.schema([("bucket", pa.int32())]), flavor="hive"),
                     existing_data_behavior="delete_matching")


def _write_packs(sink: Sink, spooled: Path, gen: int, buckets: int, spool: Path) -> None:
    """One pack per bucket: its entries deduplicated (a run file merged twice) and sorted by id."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    names = index_schema().names
    for b in range(buckets):
        paths = sorted((spooled / f"bucket={b}").glob("*.arrow"))
        parts = []
        for p in paths:
            with pa.OSFile(str(p), "rb") as f:
                parts.append(ipc.open_file(f).read_all().select(names))
        part = pa.concat_tables(parts) if parts else index_schema().empty_table()
        part = part.group_by(names, use_threads=False).aggregate([]).select(names)
        part = part.sort_by([("task_id", "ascending"), ("key", "ascending")]).cast(index_schema())
        _put_table(sink, pack_key(gen, buckets, b), part, spool)


def _retire(sink: Sink, st: IndexState, gen: int) -> None:
    """After the new generation's marker: the run files it merged, older markers and packs."""
    for key in [*st.deltas, *st.markers]:
        sink.delete(key)
    for o in sink.list(PACKS):
        if int(o.key[len(PACKS):].split("/", 1)[0]) < gen:
            sink.delete(o.key)


def _pack_keys(st: IndexState) -> list[str]:
    return [pack_key(st.generation, st.buckets, b) for b in range(st.buckets)] if st.generation else []


def _count(sink: Sink, keys: Iterable[str]) -> int:
    """Entries in the index objects ``keys``, from their footers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for key in keys:
        with sink.open(key) as f:
            try:
                total += pq.read_metadata(f).num_rows
            except (pa.ArrowException, OSError) as exc:
                raise damaged_index(sink, key, exc) from exc
    return total


def _put_table(sink: Sink, key: str, table: pa.Table, spool: Path) -> None:
    import pyarrow.parquet as pq

    path = spool / ("index-" + key.replace("/", "-"))
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20)
    try:
        sink.put(key, path)
    finally:
        path.unlink(missing_ok=True)


def located(sink: Sink, spool: Path) -> tuple[Iterator[pa.Table], int]:
    """(index entries of every committed data file, read from the data files themselves;
    how many entries that is)."""
    from celery_archive.archive import manifest as mf  # a lookup needs none of it

    files = list(mf.committed_files(sink))
    return _located(sink, spool, files), sum(e.rows for e in files)


def _located(sink: Sink, spool: Path, files: list[mf.FileEntry]) -> Iterator[pa.Table]:
    from celery_archive.crypto import cipher_of  # a lookup needs none of it

    path = spool / "index-rebuild.data"
    for entry in files:
        download(sink, entry.key, path)
        yield from locate_batches(path, entry.key, entry.format, entry.compression, cipher_of(sink, entry))
        path.unlink()
