"""Where each record sits in a data file, and reading it back from there.

``locate`` turns a data file into index entries (see ``schemas/index.v1.arrow.json``): for
Parquet the row group's byte range and the footer's, for JSONL the line's byte range (or the
zstd frame / gzip member holding it). ``fetch`` reads records back from those ranges with
one ranged read per block (plus, for Parquet, one read of the footer per file).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from celery_archive.errors import SinkError
from celery_archive.formats.readback import rows_to_table
from celery_archive.schemas import INDEX_VERSION, arrow_schema, conform
from celery_archive.sinks import RangeReader

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.sinks import Sink

_CHUNK = 1 << 16


def index_schema() -> pa.Schema:
    return arrow_schema(INDEX_VERSION, "index")


def _entries(cols: dict[str, Any], n: int | None = None) -> pa.Table:
    """Index entries from columns: arrays, lists or (given ``n``) one value for all ``n`` rows."""
    import pyarrow as pa

    schema = index_schema()

    def column(value: Any, type_: pa.DataType) -> pa.Array:
        if n is not None and not isinstance(value, (list, pa.Array, pa.ChunkedArray)):
            return pa.repeat(pa.scalar(value, type_), n)
        return value.cast(type_) if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value, type_)

    return pa.table({f.name: column(cols[f.name], f.type) for f in schema}, schema=schema)


def locate(path: Path, key: str, fmt: str, compression: str | None) -> pa.Table:
    """Index entries for every record in the file (a local copy of data file ``key``), in
    file order."""
    if fmt == "parquet":
        return _locate_parquet(path, key)
    cols: dict[str, list[Any]] = {f.name: [] for f in index_schema()}
    with open(path, "rb") as f:
        blocks = _lines(f) if not compression else _frames(f, compression)
        for offset, length, lines in blocks:
            for row, line in enumerate(lines):
                rec = orjson.loads(line)
                for name, value in (("task_id", rec["task_id"]), ("kind", rec["kind"]), ("key", key), ("block", 0),
                                    ("offset", offset), ("length", length), ("row", row),
                                    ("footer_offset", 0), ("footer_length", 0)):
                    cols[name].append(value)
    return _entries(cols)


def _lines(f: BinaryIO) -> Iterator[tuple[int, int, list[bytes]]]:
    offset = 0
    for line in f:
        if line.strip():
            yield offset, len(line), [line]
        offset += len(line)


def _decompressor(compression: str) -> Any:
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if compression == "gzip":
        return zlib.decompressobj(wbits=31)
    raise SinkError(f"unknown JSONL compression {compression!r}")


def _frames(f: BinaryIO, compression: str) -> Iterator[tuple[int, int, list[bytes]]]:
    """(offset, length, lines) of each zstd frame / gzip member, streamed in small chunks."""
    start = pos = 0  # where the current frame starts; bytes of the file consumed so far
    d, out = _decompressor(compression), list[bytes]()
    pending = b""
    while True:
        chunk = pending or f.read(_CHUNK)
        pending = b""
        if not chunk:
            if out or start != pos:
                raise SinkError(f"{f.name}: truncated {compression} frame at byte {start}")
            return
        pos += len(chunk)
        out.append(d.decompress(chunk))
        if d.eof:
            rest = d.unused_data
            pos -= len(rest)
            yield start, pos - start, [ln for ln in b"".join(out).splitlines(keepends=True) if ln.strip()]
            start, d, out, pending = pos, _decompressor(compression), [], rest


def _locate_parquet(path: Path, key: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(size - 8)
        footer_length = int.from_bytes(f.read(4), "little") + 8
    parts = []
    for i in range(pf.metadata.num_row_groups):
        start, end = row_group_range(pf.metadata.row_group(i))
        t = pf.read_row_group(i, columns=["task_id", "kind"])
        n = t.num_rows
        parts.append(_entries({
            "task_id": t.column("task_id"), "kind": t.column("kind"), "key": key, "block": i, "offset": start,
            "length": end - start, "row": pa.array(range(n), pa.int32()),
            "footer_offset": size - footer_length, "footer_length": footer_length,
        }, n))
    return pa.concat_tables(parts) if parts else index_schema().empty_table()


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


def fetch(sink: Sink, key: str, entries: list[dict[str, Any]]) -> pa.Table:
    """The records at ``entries`` (index entries of one data file) as a record table."""
    import pyarrow as pa

    if key.endswith(".parquet"):
        import pyarrow.parquet as pq

        e0 = entries[0]
        footer = sink.read(key, e0["footer_offset"], e0["footer_length"])
        size = e0["footer_offset"] + e0["footer_length"]
        metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
        pieces = {e0["footer_offset"]: footer}
        parts = []
        for block in sorted({e["block"] for e in entries}):
            first = next(e for e in entries if e["block"] == block)
            pieces[first["offset"]] = sink.read(key, first["offset"], first["length"])
            pf = pq.ParquetFile(RangeReader(size, _served(pieces)), metadata=metadata, pre_buffer=False)
            rows = pf.read_row_group(block).take([e["row"] for e in entries if e["block"] == block])
            parts.append(rows)
            del pieces[first["offset"]]
        return conform(pa.concat_tables(parts))  # a file of an earlier record version: its new columns null
    compression = "zstd" if key.endswith(".zst") else "gzip" if key.endswith(".gz") else None
    lines: list[bytes] = []
    for (offset, length), group in _by_block(entries).items():
        data = sink.read(key, offset, length)
        if compression == "zstd":
            d = _decompressor("zstd")
            data = d.decompress(data)
        elif compression == "gzip":
            data = gzip.decompress(data)
        block_lines = [ln for ln in data.splitlines() if ln.strip()]
        lines.extend(block_lines[e["row"]] for e in group)
    return rows_to_table([orjson.loads(ln) for ln in lines])


def _by_block(entries: list[dict[str, Any]]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    out: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault((e["offset"], e["length"]), []).append(e)
    return out
