"""JSONL data files: one JSON object a line (binary columns base64, timestamps RFC 3339 UTC).
Compressed files are a series of independent zstd frames or gzip members of at most
``FRAME_ROWS`` lines each (a valid .zst / .gz file for any reader): the index points at a
line's byte range, or at the frame holding it, so that restore decompresses one small frame.

An encrypted file (a ``cipher``) starts with ``crypto.JSONL_MAGIC`` and a JSON header line
naming its key object, then frames of at most ``FRAME_ROWS`` lines (compressed first, if the
file is), each a 4-byte big-endian length and ``Cipher.seal`` of it (authenticated, bound to
the file and the frame's offset). Its index entries point at a frame, and their
``footer_offset``/``footer_length`` at the header (that is how restore knows it is encrypted)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from celery_archive.errors import SinkError
from celery_archive.formats.entries import entries, index_schema, naive
from celery_archive.schemas import arrow_schema, record_fields

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from celery_archive.crypto import Cipher
    from celery_archive.sinks import Sink

FRAME_ROWS = 1000  # lines per zstd frame / gzip member of a compressed JSONL file
_EXTENSIONS = {"zstd": "jsonl.zst", "gzip": "jsonl.gz"}
_CHUNK = 1 << 16


def extension(compression: str | None) -> str:
    return _EXTENSIONS.get(compression or "none", "jsonl")


def compression_of(key: str) -> str | None:
    return "zstd" if key.endswith(".zst") else "gzip" if key.endswith(".gz") else None


def _types() -> dict[str, str]:
    return {f["name"]: f["type"] for f in record_fields()}


class FileWriter:
    _binary = tuple(f["name"] for f in record_fields() if f["type"] == "binary")

    def __init__(self, path: Path, compression: str, pool: ThreadPoolExecutor, cipher: Cipher | None = None) -> None:
        self._out = open(path, "wb")
        self._cipher = cipher
        if cipher is not None:
            self._out.write(_header(cipher))
        self._compress: Callable[[bytes], bytes] | None = None
        if compression == "zstd":
            import zstandard

            self._compress = zstandard.ZstdCompressor(level=3, write_content_size=True).compress
        elif compression == "gzip":
            self._compress = lambda data: gzip.compress(data, compresslevel=6, mtime=0)

    def write(self, table: pa.Table) -> None:
        columns = []
        for name in table.column_names:
            values = table.column(name).to_pylist()
            if name in self._binary:
                values = [None if v is None else base64.b64encode(v).decode("ascii") for v in values]
            columns.append(values)
        opt = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
        names = table.column_names
        lines = [orjson.dumps(dict(zip(names, row)), option=opt) + b"\n" for row in zip(*columns)]
        if self._compress is None and self._cipher is None:
            self._out.write(b"".join(lines))
            return
        for i in range(0, len(lines), FRAME_ROWS):
            frame = b"".join(lines[i:i + FRAME_ROWS])
            if self._compress is not None:
                frame = self._compress(frame)
            if self._cipher is not None:
                frame = self._cipher.seal(frame, self._out.tell())
                frame = len(frame).to_bytes(4, "big") + frame
            self._out.write(frame)

    def size(self) -> int:
        return self._out.tell()

    def close(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()


def _header(cipher: Cipher) -> bytes:
    from celery_archive.crypto import JSONL_MAGIC

    return JSONL_MAGIC + orjson.dumps({"key": cipher.name, "algorithm": "AES-256-GCM", "frame_rows": FRAME_ROWS}) + b"\n"


def _skip_header(f: BinaryIO, cipher: Cipher) -> int:
    """Past an encrypted file's header (checked against ``cipher``): its length."""
    from celery_archive.crypto import JSONL_MAGIC

    magic = f.read(len(JSONL_MAGIC))
    if magic != JSONL_MAGIC:
        raise SinkError(f"{cipher.file}: its manifest says encrypted but it does not start as an encrypted JSONL file")
    line = f.readline()
    if orjson.loads(line).get("key") != cipher.name:
        raise SinkError(f"{cipher.file}: its header names another key than {cipher.name}")
    return len(magic) + len(line)


def _sealed(f: BinaryIO, compression: str | None, cipher: Cipher) -> Iterator[tuple[int, int, list[bytes]]]:
    """(offset, length, lines) of each encrypted frame."""
    pos = _skip_header(f, cipher)
    while head := f.read(4):
        n = int.from_bytes(head, "big")
        body = f.read(n)
        if len(head) < 4 or len(body) < n:
            raise SinkError(f"{cipher.file}: truncated encrypted frame at byte {pos}")
        yield pos, 4 + n, _frame_lines(cipher.open(body, pos), compression)
        pos += 4 + n


def decrypted(f: BinaryIO, key: str, cipher: Cipher) -> bytes:
    """The JSONL text of an encrypted file, read from ``f`` (named ``key``), in memory."""
    return b"".join(b"".join(lines) for _o, _n, lines in _sealed(f, compression_of(key), cipher))


def _frame_lines(data: bytes, compression: str | None) -> list[bytes]:
    if compression == "zstd":
        data = _decompressor("zstd").decompress(data)
    elif compression == "gzip":
        data = gzip.decompress(data)
    return [ln for ln in data.splitlines(keepends=True) if ln.strip()]


def _text_lines(path: Path, compression: str | None, cipher: Cipher | None) -> Iterator[bytes]:
    if cipher is None:
        with _open_text(path, compression) as f:
            yield from f
        return
    with open(path, "rb") as raw:
        for _offset, _length, lines in _sealed(raw, compression, cipher):
            yield from lines


def _open_text(path: Path, compression: str | None) -> BinaryIO:
    raw = open(path, "rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True))
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "binary":
        return base64.b64decode(value)
    if kind.startswith("timestamp"):
        return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def read_tables(path: Path, compression: str | None, columns: Sequence[str], batch_rows: int,
                cipher: Cipher | None = None) -> Iterator[pa.Table]:
    import pyarrow as pa

    schema, types = arrow_schema(), _types()

    def table(out: dict[str, list[Any]]) -> pa.Table:
        return naive(pa.table({c: pa.array(v, schema.field(c).type) for c, v in out.items()}))

    out: dict[str, list[Any]] = {c: [] for c in columns}
    for line in _text_lines(path, compression, cipher):
        if not line.strip():
            continue
        row = orjson.loads(line)
        for c in columns:
            out[c].append(_value(types[c], row.get(c)))  # absent in earlier versions: null
        if len(out[columns[0]]) >= batch_rows:
            yield table(out)
            out = {c: [] for c in columns}
    if out[columns[0]]:
        yield table(out)


def first_record(path: Path, compression: str | None, columns: Sequence[str] = (),
                 cipher: Cipher | None = None) -> dict[str, Any]:
    """The first record as parsed JSON (all of its fields: they tell the record version)."""
    for line in _text_lines(path, compression, cipher):
        if line.strip():
            row: dict[str, Any] = orjson.loads(line)
            return row
    return {}


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Records parsed from JSONL lines as a table with the record schema."""
    import pyarrow as pa

    schema, types = arrow_schema(), _types()
    return pa.table({f.name: pa.array([_value(types[f.name], r.get(f.name)) for r in rows], f.type) for f in schema}, schema=schema)


def locate_batches(path: Path, key: str, compression: str | None, cipher: Cipher | None = None) -> Iterator[pa.Table]:
    """Tables of about ``LOCATE_ROWS`` index entries (whole frames: a frame's lines stay together)."""
    from celery_archive.formats import LOCATE_ROWS

    names = [f.name for f in index_schema()]
    cols: dict[str, list[Any]] = {name: [] for name in names}
    header = 0 if cipher is None else len(_header(cipher))
    with open(path, "rb") as f:
        blocks = _sealed(f, compression, cipher) if cipher else _lines(f) if not compression else frames(f, compression)
        for offset, length, lines in blocks:
            for row, line in enumerate(lines):
                rec = orjson.loads(line)
                for name, value in (("task_id", rec["task_id"]), ("kind", rec["kind"]), ("key", key), ("block", 0),
                                    ("offset", offset), ("length", length), ("row", row),
                                    ("footer_offset", 0), ("footer_length", header)):
                    cols[name].append(value)
            if len(cols["task_id"]) >= LOCATE_ROWS:
                yield entries(cols)
                cols = {name: [] for name in names}
    if cols["task_id"]:
        yield entries(cols)


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


def frames(f: BinaryIO, compression: str) -> Iterator[tuple[int, int, list[bytes]]]:
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



def fetch(sink: Sink, key: str, found: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pa.Table:
    compression = compression_of(key)
    by_block: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e in found:
        by_block.setdefault((e["offset"], e["length"]), []).append(e)
    cipher = None
    if found[0]["footer_length"]:  # it points at the header: encrypted (the crypto modules only then)
        from celery_archive.crypto import cipher_at

        cipher = cipher_at(sink, key, encrypted=True)
    lines: list[bytes] = []
    for (offset, length), group in by_block.items():
        data = sink.read(key, offset, length)
        if cipher is not None:
            data = cipher.open(data[4:], offset)
        block_lines = _frame_lines(data, compression)
        lines.extend(block_lines[e["row"]] for e in group)
    return rows_to_table([orjson.loads(ln) for ln in lines])
