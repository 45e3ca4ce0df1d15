"""External-table DDL for an archive, generated from the record schema and the layout
(``data/date=YYYY-MM-DD/*.parquet`` or ``*.jsonl[.zst|.gz]``): Athena (partition projection),
Trino (Hive connector, partitions synced), Spark (partition discovery), BigQuery (Hive
partitioned external table) and DuckDB (a view with Hive partitioning)."""

from __future__ import annotations

import pyarrow as pa

from celery_archive.errors import ConfigError
from celery_archive.schemas import RECORD_VERSION, arrow_schema

ENGINES = ("athena", "trino", "spark", "bigquery", "duckdb")

_TYPES = {
    "athena": {"string": "string", "int32": "int", "int64": "bigint", "binary": "binary", "timestamp": "timestamp"},
    "trino": {"string": "varchar", "int32": "integer", "int64": "bigint", "binary": "varbinary", "timestamp": "timestamp(3)"},
    "spark": {"string": "STRING", "int32": "INT", "int64": "BIGINT", "binary": "BINARY", "timestamp": "TIMESTAMP"},
    "bigquery": {"string": "STRING", "int32": "INT64", "int64": "INT64", "binary": "BYTES", "timestamp": "TIMESTAMP"},
    "duckdb": {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "binary": "BLOB", "timestamp": "TIMESTAMPTZ"},
}


def _kind(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "timestamp"
    return {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.binary(): "binary"}[t]


def _columns(engine: str, quote: str, data_format: str) -> list[str]:
    types = _TYPES[engine]
    out = []
    for f in arrow_schema():
        kind = _kind(f.type)
        if data_format == "jsonl" and kind == "binary":
            kind = "string"  # JSONL holds bytes as base64 text
        out.append(f"  {quote}{f.name}{quote} {types[kind]}")
    return out


def ddl(url: str, engine: str, data_format: str = "parquet", table: str = "celery_results") -> str:
    """``url``: the archive's location as the engine reads it (s3://bucket/prefix, gs://..., a path)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown --engine {engine!r}: use one of {', '.join(ENGINES)}")
    if data_format not in ("parquet", "jsonl"):
        raise ConfigError(f"unknown data format {data_format!r}: use parquet or jsonl")
    data = url.rstrip("/") + "/data"
    head = f"-- celery-archive record schema v{RECORD_VERSION}, {data_format} files under {data}/date=YYYY-MM-DD/\n"
    if engine == "duckdb":
        reader = (f"read_parquet('{data}/*/*.parquet', hive_partitioning = true)" if data_format == "parquet" else
                  f"read_json('{data}/*/*.jsonl*', format = 'newline_delimited', hive_partitioning = true, columns = {{"
                  + ", ".join(f"'{c.split()[0]}': '{c.split()[1]}'" for c in _columns("duckdb", "", data_format)) + "})")
        return head + f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {reader};\n"
    if engine == "athena":
        cols = ",\n".join(_columns("athena", "`", data_format))
        stored = "STORED AS PARQUET" if data_format == "parquet" else "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'"
        return head + (
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{cols}\n)\nPARTITIONED BY (`date` string)\n{stored}\n"
            f"LOCATION '{data}/'\nTBLPROPERTIES (\n  'projection.enabled' = 'true',\n  'projection.date.type' = 'date',\n"
            "  'projection.date.format' = 'yyyy-MM-dd',\n  'projection.date.range' = '2000-01-01,NOW',\n"
            "  'projection.date.interval' = '1',\n  'projection.date.interval.unit' = 'DAYS',\n"
            f"  'storage.location.template' = '{data}/date=${{date}}/'\n);\n")
    if engine == "trino":
        cols = ",\n".join([*_columns("trino", '"', data_format), '  "date" varchar'])
        schema, _, name = table.rpartition(".")
        return head + (
            f"CREATE TABLE IF NOT EXISTS hive.{schema or 'default'}.{name} (\n{cols}\n)\nWITH (\n"
            f"  external_location = '{data}',\n  format = '{'PARQUET' if data_format == 'parquet' else 'JSON'}',\n"
            "  partitioned_by = ARRAY['date']\n);\n"
            f"CALL hive.system.sync_partition_metadata('{schema or 'default'}', '{name}', 'FULL');\n")
    if engine == "spark":
        cols = ",\n".join([*_columns("spark", "`", data_format), "  `date` DATE"])
        return head + (
            f"CREATE TABLE IF NOT EXISTS {table} (\n{cols}\n)\nUSING {'parquet' if data_format == 'parquet' else 'json'}\n"
            f"PARTITIONED BY (`date`)\nLOCATION '{data}';\nMSCK REPAIR TABLE {table};\n")
    # bigquery: a Hive-partitioned external table (for S3, through a BigQuery Omni connection)
    cols = ",\n".join(_columns("bigquery", "`", data_format))
    fmt = "PARQUET" if data_format == "parquet" else "NEWLINE_DELIMITED_JSON"
    body = "" if data_format == "parquet" else f" (\n{cols}\n)"
    return head + (
        f"CREATE EXTERNAL TABLE `{table}`{body}\nWITH PARTITION COLUMNS (`date` DATE)\n"
        f"OPTIONS (\n  format = '{fmt}',\n  uris = ['{data}/*'],\n  hive_partition_uri_prefix = '{data}'\n);\n")
