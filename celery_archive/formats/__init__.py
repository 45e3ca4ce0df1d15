"""Data file formats, one module each (``parquet``, ``jsonl``) with the same contract:

* ``extension(compression)``: the file name's ending;
* ``FileWriter(path, compression, pool, cipher)``: ``write(table)`` record batches, ``size()`` so far, ``close()``;
* ``read_tables(path, compression, columns, batch_rows, cipher)``: the named columns back, in tables of at
  most ``batch_rows`` rows, timestamps as naive UTC (a column the file's record version lacks: null);
* ``first_record(path, compression, columns, cipher)``: one record (what a file holds, for a rebuilt manifest);
* ``locate_batches(path, key, compression, cipher)``: restore index entries (``entries.index_schema``) for
  every record, in file order, in tables of a bounded size;
* ``fetch(sink, key, entries, columns)``: the records at those entries, read by ranges from the sink (an
  encrypted file's key from the sink: ``crypto.cipher_at``); with ``columns``, a format may decode only
  those (the others may come back null).

``cipher`` is the file's ``crypto.Cipher`` when it is encrypted (``crypto.cipher_of``), else None.

A new format is one such module and one line in ``MODULES``. This module names what each
format takes and imports no format until one is used, so configuration can check a choice
without loading a writer.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.crypto import Cipher
    from celery_archive.sinks import Sink

MODULES = {"parquet": "celery_archive.formats.parquet", "jsonl": "celery_archive.formats.jsonl"}
COMPRESSIONS = {"parquet": ("zstd", "snappy", "gzip", "none"), "jsonl": ("none", "zstd", "gzip")}
DEFAULT_COMPRESSION = {"parquet": "zstd", "jsonl": "none"}
BATCH_ROWS = 50_000
LOCATE_ROWS = 50_000  # index entries per table that locate_batches yields from a JSONL file


def module(fmt: str) -> Any:
    """The module of format ``fmt`` (a Format or its name)."""
    return importlib.import_module(MODULES[str(fmt)])


def format_of(key: str) -> str:
    """The format of a data file, from its name."""
    return "parquet" if key.endswith(".parquet") else "jsonl"


def read_tables(path: Path, fmt: str, compression: str | None, columns: Sequence[str],
                batch_rows: int = BATCH_ROWS, cipher: Cipher | None = None) -> Iterator[pa.Table]:
    """The named columns of one data file in tables of at most ``batch_rows`` rows (memory
    bounded by that, not by the file); timestamps become naive UTC."""
    tables: Iterator[pa.Table] = module(fmt).read_tables(path, compression, columns, batch_rows, cipher)
    return tables


def read_columns(path: Path, fmt: str, compression: str | None, columns: Sequence[str],
                 cipher: Cipher | None = None) -> Iterator[dict[str, list[Any]]]:
    """As ``read_tables``, each batch as Python lists by column name."""
    for t in read_tables(path, fmt, compression, columns, cipher=cipher):
        yield {c: t.column(c).to_pylist() for c in columns}


def locate_batches(path: Path, key: str, fmt: str, compression: str | None,
                   cipher: Cipher | None = None) -> Iterator[pa.Table]:
    """Index entries for every record in the file (a local copy of data file ``key``), in file
    order, in tables of a bounded size (a row group; ``LOCATE_ROWS`` lines): memory stays
    that, not the file's (a 128 MiB file holds ~600,000 Redis results)."""
    tables: Iterator[pa.Table] = module(fmt).locate_batches(path, key, compression, cipher)
    return tables


def locate(path: Path, key: str, fmt: str, compression: str | None, cipher: Cipher | None = None) -> pa.Table:
    """The same entries in one table (its memory grows with the file)."""
    import pyarrow as pa

    from celery_archive.formats.entries import index_schema

    tables = list(locate_batches(path, key, fmt, compression, cipher))
    return pa.concat_tables(tables) if tables else index_schema().empty_table()


def fetch(sink: Sink, key: str, entries: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pa.Table:
    """The records at ``entries`` (index entries of data file ``key``) as a record table (of
    ``columns`` only, when given)."""
    table: pa.Table = module(format_of(key)).fetch(sink, key, entries, columns)
    return table if columns is None else table.select(list(columns))
