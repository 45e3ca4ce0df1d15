"""Parquet data files: written by pyarrow from record batches, read back in bounded batches,
located by row group (the index points at a row group's byte range and the footer's), and
fetched back with one ranged read of the footer and one per row group."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.errors import SinkError
from celery_archive.formats.entries import entries, naive
from celery_archive.schemas import arrow_schema, conform
from celery_archive.sinks import RangeReader

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future, ThreadPoolExecutor

    import pyarrow as pa

    from celery_archive.crypto import Cipher
    from celery_archive.sinks import Sink

# dictionary-encode only low-cardinality columns, and keep statistics where queries and the
# restore index use them: both cost time and space on ids and payloads for nothing
_DICTIONARY = ["kind", "status", "name", "worker", "queue", "content_type", "content_encoding", "compression",
               "storage_format", "source", "source_table", "rule", "run_id"]
_STATISTICS = ["task_id", "kind", "status", "date_done", "name", "worker", "queue", "archived_at"]


def extension(compression: str | None) -> str:
    return "parquet"


class FileWriter:
    """Row groups are encoded and compressed on a writer thread (pyarrow releases the GIL),
    while the next batch is converted to Arrow; at most one row group is in flight. With a
    ``cipher`` the footer and every column are encrypted (Parquet modular encryption)."""

    def __init__(self, path: Path, compression: str, pool: ThreadPoolExecutor, cipher: Cipher | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pool = pool
        # buffered: the writer asks where it is (tell) and writes each page, a system call each
        self._out = pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), buffer_size=1 << 20)
        self._writer = pq.ParquetWriter(self._out, arrow_schema(), compression=compression,
                                        use_dictionary=_DICTIONARY, write_statistics=_STATISTICS,
                                        encryption_properties=None if cipher is None else cipher.parquet_write())
        self._pending: Future[None] | None = None
        self._queued = 0  # bytes of Arrow data handed to the writer thread, not yet on disk

    def write(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._pool.submit(self._writer.write_table, table)
        self._queued = table.nbytes

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending, self._queued = None, 0

    def size(self) -> int:
        # the bytes on disk, plus an upper bound for the row group still being written
        return int(self._out.tell()) + self._queued

    def close(self) -> None:
        self._wait()
        self._writer.close()
        self._out.close()


def _open(path: Path, cipher: Cipher | None) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, decryption_properties=None if cipher is None else cipher.parquet_read())


def read_tables(path: Path, compression: str | None, columns: Sequence[str], batch_rows: int,
                cipher: Cipher | None = None) -> Iterator[pa.Table]:
    import pyarrow as pa

    schema = arrow_schema()
    pf = _open(path, cipher)
    present = [c for c in columns if c in pf.schema_arrow.names]
    # a row group at a time (a batch as the run wrote it), sliced: iter_batches keeps buffers of
    # every row group it has read until it ends (a purge's memory grew ~65 bytes a result of a
    # Redis run, 46 MiB over 600,000: benchmarks/bench_redis.py --memory)
    for i in range(pf.metadata.num_row_groups):
        group = pf.read_row_group(i, columns=present)
        for start in range(0, group.num_rows, batch_rows):
            t = group.slice(start, batch_rows)
            # a column of a later record version than the file's comes back null
            t = pa.table({c: t.column(c) if c in present else pa.nulls(t.num_rows, schema.field(c).type) for c in columns})
            yield naive(t)


def first_record(path: Path, compression: str | None, columns: Sequence[str], cipher: Cipher | None = None) -> dict[str, Any]:
    for t in read_tables(path, compression, [c for c in columns], 1, cipher):
        rows: list[dict[str, Any]] = t.slice(0, 1).to_pylist()
        return rows[0] if rows else {}
    return {}


def locate_batches(path: Path, key: str, compression: str | None, cipher: Cipher | None = None) -> Iterator[pa.Table]:
    """One table of index entries per row group."""
    import pyarrow as pa

    pf = _open(path, cipher)
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(size - 8)
        footer_length = int.from_bytes(f.read(4), "little") + 8
    for i in range(pf.metadata.num_row_groups):
        start, end = row_group_range(pf.metadata.row_group(i))
        t = pf.read_row_group(i, columns=["task_id", "kind"])
        n = t.num_rows
        yield entries({
            "task_id": t.column("task_id"), "kind": t.column("kind"), "key": key, "block": i, "offset": start,
            "length": end - start, "row": pa.array(range(n), pa.int32()),
            "footer_offset": size - footer_length, "footer_length": footer_length,
        }, n)


def row_group_range(rg: Any) -> tuple[int, int]:
    """[start, end) of a row group's column chunks (they are contiguous in the file)."""
    start, end = None, 0
    for c in range(rg.num_columns):
        col = rg.column(c)
        first = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        start = first if start is None else min(start, first)
        end = max(end, first + col.total_compressed_size)
    return int(start or 0), end


def _served(pieces: dict[int, bytes]) -> Callable[[int, int], bytes]:
    """Reads served from ranges fetched earlier: enough for pyarrow to decode a row group
    whose bytes and footer are among them."""

    def read_at(pos: int, n: int) -> bytes:
        for start, data in pieces.items():
            if start <= pos and pos + n <= start + len(data):
                return data[pos - start:pos - start + n]
        raise SinkError(f"restore asked for bytes {pos}..{pos + n} that the index did not point to")

    return read_at


def reader(source: Any, metadata: Any = None, decryption: Any = None, pre_buffer: bool = True) -> Any:
    """pyarrow's Parquet reader of ``source`` (a file object or an Arrow buffer reader), the one
    ``pq.ParquetFile`` wraps, without importing pyarrow.parquet: that loads pyarrow.fs and with
    it the S3, Azure and HDFS file systems and OpenSSL (~20 ms of a CLI restore). Its options are
    those of every pyarrow from 15 on (the archive's files hold no Arrow extension types)."""
    from pyarrow._parquet import ParquetReader

    r = ParquetReader()
    r.open(source, metadata=metadata, pre_buffer=pre_buffer, decryption_properties=decryption)
    return r


def footer_metadata(sink: Sink, key: str, footer: bytes) -> tuple[Any, Any]:
    """(FileMetaData, decryption properties or None) from a file's footer bytes (its tail,
    ending in the magic: ``PAR1``, or ``PARE`` when the footer is encrypted)."""
    import pyarrow as pa

    magic = footer[-4:]
    decryption = None
    if magic == b"PARE":  # the crypto modules only for an encrypted file
        from celery_archive.crypto import cipher_at

        cipher = cipher_at(sink, key, encrypted=True)
        decryption = None if cipher is None else cipher.parquet_read()
    return reader(pa.BufferReader(magic + footer), decryption=decryption).metadata, decryption


def fetch(sink: Sink, key: str, found: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pa.Table:
    import pyarrow as pa

    e0 = found[0]
    footer = sink.read(key, e0["footer_offset"], e0["footer_length"])
    size = e0["footer_offset"] + e0["footer_length"]
    metadata, decryption = footer_metadata(sink, key, footer)
    pieces = {e0["footer_offset"]: footer}
    parts = []
    for block in sorted({e["block"] for e in found}):
        first = next(e for e in found if e["block"] == block)
        pieces[first["offset"]] = sink.read(key, first["offset"], first["length"])
        r = reader(RangeReader(size, _served(pieces)), metadata, decryption, pre_buffer=False)
        present = None
        if columns is not None:  # only those (a file of an earlier record version lacks some)
            names = set(r.schema_arrow.names)
            present = [r.column_name_idx(c) for c in columns if c in names]
        group = r.read_row_group(block, column_indices=present, use_threads=False)  # slices, not take(): that loads pyarrow.compute (~60 ms of a CLI restore)
        parts += [group.slice(e["row"], 1) for e in found if e["block"] == block]
        del pieces[first["offset"]]
    return conform(pa.concat_tables(parts))  # a file of an earlier record version: its new columns null
