"""Reading one archived record by its index entry, with the data files' footers and decoded
row groups kept in bounded LRUs: the first lookup in a row group reads its byte range once
(only the columns a Celery meta is made from), later lookups in it read nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery_archive.errors import SinkError
from celery_archive.formats import fetch
from celery_archive.sinks import RangeReader

from .cache import ByteLRU

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.sinks import Sink

COLUMNS = ("task_id", "kind", "status", "date_done", "name", "worker", "retries", "queue", "traceback", "group_id",
           "parent_id", "raw_result", "raw_args", "raw_kwargs", "raw_children", "raw_value", "content_type",
           "content_encoding", "compression", "storage_format", "raw_date_done")
"""What a meta is made from: the decoded JSON copies and the bookkeeping columns are not read."""


def _served(start: int, data: bytes) -> Callable[[int, int], bytes]:
    def read_at(pos: int, n: int) -> bytes:
        if start <= pos and pos + n <= start + len(data):
            return data[pos - start:pos - start + n]
        raise SinkError(f"bytes {pos}..{pos + n} asked for lie outside the row group the index points to")

    return read_at


class RowCache:
    def __init__(self, sink: Sink, budget: int) -> None:
        self.sink = sink
        self._groups: ByteLRU[tuple[str, int], pa.Table] = ByteLRU(budget)
        self._footers: ByteLRU[str, Any] = ByteLRU(max(budget // 16, 1 << 20))
        self.loads = 0  # row groups decoded (for the benchmark)

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        key = entry["key"]
        if not key.endswith(".parquet"):
            rows: list[dict[str, Any]] = fetch(self.sink, key, [entry]).to_pylist()  # one small ranged read
            return rows[0]
        table = self._groups.get_or_load((key, entry["block"]), lambda: self._load(entry))
        out: dict[str, Any] = table.slice(entry["row"], 1).to_pylist()[0]
        return out

    def _metadata(self, entry: dict[str, Any]) -> Any:
        def load() -> tuple[Any, int]:
            from celery_archive.formats.parquet import footer_metadata

            footer = self.sink.read(entry["key"], entry["footer_offset"], entry["footer_length"])
            # (metadata, decryption properties: an encrypted file's, its key read once here)
            return footer_metadata(self.sink, entry["key"], footer), 4 * len(footer)

        return self._footers.get_or_load(entry["key"], load)

    def _load(self, entry: dict[str, Any]) -> tuple[pa.Table, int]:
        import pyarrow.parquet as pq

        metadata, decryption = self._metadata(entry)
        data = self.sink.read(entry["key"], entry["offset"], entry["length"])
        size = entry["footer_offset"] + entry["footer_length"]
        pf = pq.ParquetFile(RangeReader(size, _served(entry["offset"], data)), metadata=metadata, pre_buffer=False,
                            decryption_properties=decryption)
        present = [c for c in COLUMNS if c in pf.schema_arrow.names]  # a file of an earlier record version
        table = pf.read_row_group(entry["block"], columns=present, use_threads=False)
        self.loads += 1
        return table, max(int(table.nbytes), 1)
