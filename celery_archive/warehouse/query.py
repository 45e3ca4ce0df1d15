"""SQL over an archive: DuckDB queries a table ``results`` made of the data files of every
committed run (Parquet and JSONL alike), read in place through pyarrow's filesystems (local,
or S3 with boto3's settings: ``AWS_ENDPOINT_URL``, region, credentials), with nothing downloaded
first and no DuckDB extension needed. ``date`` is the Hive partition: a filter on it opens only
that day's files. Encrypted files (sink option ``encrypt=``) are decrypted as they are read, in
memory: Parquet by pyarrow's decryption, JSONL frame by frame; no plaintext copy is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.json as pajson

from celery_archive.archive import manifest as mf
from celery_archive.crypto import Cipher, encryption_of
from celery_archive.errors import ConfigError, SinkError
from celery_archive.schemas import arrow_schema
from celery_archive.sinks import Sink, open_sink

TABLE = "results"
PARTITION = pa.schema([("date", pa.date32())])


@dataclass(frozen=True)
class ArchiveFiles:
    """Where an archive's committed data files are, for a reader with its own filesystem."""

    filesystem: pafs.FileSystem
    base: str  # the data/ directory, as the filesystem names it
    parquet: list[str]
    jsonl: list[str]
    encrypted: dict[str, str] = field(default_factory=dict)  # path -> data file key, of the encrypted files


def archive_files(sink: Sink) -> ArchiveFiles:
    """The data files of committed runs only (a run counts once its manifest exists)."""
    parquet: list[str] = []
    jsonl: list[str] = []
    encrypted: list[str] = []
    for f in mf.committed_files(sink):
        (parquet if f.format is mf.Format.PARQUET else jsonl).append(f.key)
        if f.encryption_key is not None:
            encrypted.append(f.key)
    fs, root = filesystem(sink)
    return ArchiveFiles(fs, f"{root}/data", [f"{root}/{k}" for k in parquet], [f"{root}/{k}" for k in jsonl],
                        {f"{root}/{k}": k for k in encrypted})


def filesystem(sink: Sink) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem reaching the sink, and the sink's root as that filesystem names it."""
    from celery_archive.sinks.local import LocalSink
    from celery_archive.sinks.s3 import S3Sink

    if isinstance(sink, LocalSink):
        return pafs.LocalFileSystem(), str(sink.root)
    if isinstance(sink, S3Sink):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or sink.client.meta.region_name
        fs = pafs.S3FileSystem(endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None, region=region)
        return fs, f"{sink.bucket}/{sink.prefix}".rstrip("/")
    raise ConfigError(f"querying {sink.url} is not supported")


def parquet_dataset(files: ArchiveFiles, sink: Sink | None = None) -> ds.Dataset | None:
    """The Parquet files as one pyarrow dataset with the ``date`` partition (pruned on filters);
    encrypted ones decrypted with their keys from ``sink``."""
    if not files.parquet:
        return None
    fmt: Any = "parquet"
    enc = None if sink is None else encryption_of(sink)
    first = next((p for p in files.parquet if p in files.encrypted), None)
    if sink is not None and enc is not None and first is not None:
        options = ds.ParquetFragmentScanOptions(decryption_config=enc.dataset_decryption(sink, files.filesystem, first))
        fmt = ds.ParquetFileFormat(default_fragment_scan_options=options)
    return ds.dataset(files.parquet, schema=_with_date(arrow_schema()), format=fmt, filesystem=files.filesystem,
                      partitioning=ds.partitioning(PARTITION, flavor="hive"), partition_base_dir=files.base)


def jsonl_days(files: ArchiveFiles) -> dict[str, list[str]]:
    """JSONL files by their ``date=`` partition."""
    days: dict[str, list[str]] = {}
    for path in files.jsonl:
        day = path[len(files.base) + 1:].split("/", 1)[0].removeprefix("date=")
        days.setdefault(day, []).append(path)
    return days


class JsonlFiles:
    """JSONL files (plain, zstd or gzip) as an Arrow stream with the record schema (bytes columns
    stay base64 text). Each scan gets a fresh stream (the PyCapsule stream protocol), and a file
    is opened only when a scan reaches it: a scan that a filter prunes opens nothing."""

    def __init__(self, fs: pafs.FileSystem, paths: list[str], cipher: Callable[[str], Cipher | None] = lambda _p: None) -> None:
        self.fs, self.paths, self.cipher = fs, paths, cipher
        self.schema = pa.schema([f.with_type(pa.string()) if pa.types.is_binary(f.type) else f for f in arrow_schema()])

    def batches(self) -> Iterator[pa.RecordBatch]:
        options = pajson.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore")
        for path in self.paths:
            cipher = self.cipher(path)
            if cipher is not None:  # its frames decrypted in memory
                import io

                from celery_archive.formats.jsonl import decrypted

                with self.fs.open_input_file(path) as raw:
                    text = decrypted(io.BytesIO(raw.read()), path, cipher)
                t = pajson.read_json(pa.BufferReader(text), parse_options=options)
            else:
                with self.fs.open_input_stream(path, compression="detect") as f:
                    t = pajson.read_json(f, parse_options=options)
            yield from pa.table({fl.name: t[fl.name] if fl.name in t.column_names else pa.nulls(t.num_rows, fl.type)
                                 for fl in self.schema}, schema=self.schema).to_batches()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return pa.RecordBatchReader.from_batches(self.schema, self.batches()).__arrow_c_stream__(requested_schema)


def _ciphers(sink: Sink, files: ArchiveFiles) -> Callable[[str], Cipher | None]:
    enc = encryption_of(sink)

    def cipher(path: str) -> Cipher | None:
        key = files.encrypted.get(path)
        if key is None:
            return None
        if enc is None:
            from celery_archive.crypto import cipher_at

            return cipher_at(sink, key, True)  # raises: the sink URL gives no key
        return enc.cipher(sink, key)

    return cipher


def _with_date(schema: pa.Schema) -> pa.Schema:
    return schema.append(PARTITION.field("date"))


def connect(sink_url: str) -> Any:
    """A DuckDB connection with the view ``results`` over the archive: the Parquet dataset, and
    one branch per day of JSONL files with that day as a constant, so that a filter on ``date``
    drops the other days' branches before any of their files is opened."""
    import duckdb

    sink = open_sink(sink_url)
    files = archive_files(sink)
    con = duckdb.connect()
    schema = arrow_schema()
    names = ", ".join(f'"{f.name}"' for f in schema)
    parts = []
    try:
        parquet = parquet_dataset(files, sink)
    except FileNotFoundError as exc:
        raise SinkError(f"the query failed: a data file of a committed run is missing from {sink.url}: {exc}; "
                        f"`celery-archive verify --sink {sink.url}` lists what is missing or damaged") from exc
    if parquet is not None:
        con.register("_parquet", parquet)
        parts.append(f'SELECT {names}, "date" FROM _parquet')
    decoded = ", ".join(f'from_base64("{f.name}") AS "{f.name}"' if pa.types.is_binary(f.type) else f'"{f.name}"' for f in schema)
    for i, (day, paths) in enumerate(sorted(jsonl_days(files).items())):
        con.register(f"_jsonl_{i}", JsonlFiles(files.filesystem, paths, _ciphers(sink, files)))
        parts.append(f"SELECT {decoded}, DATE '{day}' AS \"date\" FROM _jsonl_{i}")
    if not parts:  # no committed run yet: an empty table with the schema
        con.register("_empty", pa.table({f.name: pa.array([], f.type) for f in _with_date(schema)}))
        parts.append("SELECT * FROM _empty")
    con.execute(f"CREATE VIEW {TABLE} AS " + " UNION ALL ".join(parts))
    for setting in LOCKDOWN:
        con.execute(setting)
    return con


LOCKDOWN = (  # after the view is made; lock_configuration last, so that nothing undoes the rest
    "SET enable_external_access = false", "SET python_enable_replacements = false",
    "SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false", "SET lock_configuration = true",
)
READ_ONLY = (f"give one SELECT (WITH ..., FROM {TABLE}, DESCRIBE {TABLE}, SUMMARIZE {TABLE}) or EXPLAIN over `{TABLE}`: "
             "host files, the network, COPY, ATTACH, INSTALL/LOAD, CREATE and SET are refused (to save what a query "
             "returns, use --format csv or --json and redirect it)")


def check_read_only(sql: str) -> None:
    """ConfigError unless ``sql`` is one SELECT or EXPLAIN statement (DuckDB's own parser says)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"the query failed: {exc}; the table is `{TABLE}` (the record schema plus `date`)") from exc
    kinds = [st.type for st in statements]
    if len(kinds) != 1 or kinds[0] not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        got = " + ".join(k.name for k in kinds) or "an empty query"
        raise ConfigError(f"query only reads the archive's table `{TABLE}`, and this is {got}: {READ_ONLY}")


def _failure(exc: Exception, sink_url: str) -> Exception:
    """What a DuckDB error during a query means: a read of the archive's files that failed (a
    missing or damaged data file: SinkError), or a query that is wrong or not allowed."""
    import duckdb

    text = str(exc)
    if isinstance(exc, duckdb.PermissionException):
        return ConfigError(f"query only reads the archive's table `{TABLE}`, and this reads a host file or the network "
                           f"({text.splitlines()[0]}): {READ_ONLY}")
    if isinstance(exc, duckdb.InvalidInputException) and "reading the stream registered as" in text:
        return SinkError(f"the query failed reading the archive's data files: {text.splitlines()[0]}; "
                         f"`celery-archive verify --sink {sink_url}` checks every file against its manifest")
    return ConfigError(f"the query failed: {exc}; the table is `{TABLE}` (the record schema plus `date`)")


def query(sink_url: str, sql: str, batch_rows: int = 10_000) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """(column names, record batches) of ``sql`` over the archive, streamed."""
    import duckdb

    check_read_only(sql)
    con = connect(sink_url)
    try:
        reader = con.sql(sql).to_arrow_reader(batch_rows)
    except duckdb.Error as exc:
        con.close()
        raise _failure(exc, sink_url) from exc

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            raise (_failure(exc, sink_url) if isinstance(exc, duckdb.Error) else SinkError(
                f"the query failed reading the archive's data files: {exc}; "
                f"`celery-archive verify --sink {sink_url}` checks every file against its manifest")) from exc
        finally:
            con.close()

    return reader.schema.names, batches()
