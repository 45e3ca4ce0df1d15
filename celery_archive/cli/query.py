"""``celery-archive query`` and ``celery-archive ddl``: the archive as a table."""

from __future__ import annotations

import csv
import sys
from typing import Any

import click
import orjson

from celery_archive.cli.base import emit, handle_errors, main, sink_option


def _plain(v: Any) -> Any:
    import base64
    import datetime as dt
    import decimal

    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


@main.command()
@sink_option
@click.argument("sql")
@click.option("--format", "out", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output: a table, CSV with a header, or JSON lines (one object a row; bytes as base64).")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@handle_errors("query")
def query(sink: str, sql: str, out: str, as_json: bool) -> None:
    """SQL (DuckDB) over the archive as the table `results`: every committed run, Parquet and
    JSONL alike, the record schema plus its `date` partition (a filter on `date` reads only
    those days). Local and S3 archives are read in place.

    \b
    celery-archive query --sink /var/archive "select status, count(*) from results where date >= '2026-10-01' group by 1"
    celery-archive query --sink s3://bucket/prefix --format csv "select task_id, result from results where name = 'billing.charge'"
    """
    from celery_archive.warehouse.query import query as run_query

    names, batches = run_query(sink, sql)
    out = "json" if as_json else out
    if out == "json":
        for batch in batches:
            for row in batch.to_pylist():
                click.echo(orjson.dumps({k: _plain(v) for k, v in row.items()}).decode())
    elif out == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        for batch in batches:
            for row in batch.to_pylist():
                writer.writerow(["" if v is None else _plain(v) for v in row.values()])
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*names)
        shown = 0
        for batch in batches:
            for row in batch.to_pylist():
                table.add_row(*("" if v is None else str(_plain(v)) for v in row.values()))
                shown += 1
        Console(width=200).print(table)
        click.echo(f"{shown:,} row(s)")


@main.command()
@sink_option
@click.option("--engine", type=click.Choice(["athena", "trino", "spark", "bigquery", "duckdb"]), required=True,
              help="The engine the DDL is for.")
@click.option("--table", default="celery_results", show_default=True, help="Table (or view) name; [SCHEMA.]NAME for Trino.")
@click.option("--data-format", type=click.Choice(["parquet", "jsonl"]), default=None,
              help="The data files the table reads (default: the format of the archive's latest run).")
@click.option("--location", default=None, metavar="URL",
              help="The archive's location as the engine names it, if not --sink (e.g. s3a://... for Spark, gs://... for BigQuery).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the DDL instead of the DDL.")
@handle_errors("ddl")
def ddl(sink: str, engine: str, table: str, data_format: str | None, location: str | None, as_json: bool) -> None:
    """External-table DDL matching the record schema and the archive's layout: partition
    projection (Athena), synced partitions (Trino), discovered partitions (Spark), a
    Hive-partitioned external table (BigQuery), a view (DuckDB).

    \b
    celery-archive ddl --sink s3://bucket/prefix --engine athena
    """
    from celery_archive.archive import manifest as mf
    from celery_archive.sinks import open_sink
    from celery_archive.warehouse.ddl import ddl as make_ddl

    archive = open_sink(sink)
    if data_format is None:
        runs = mf.committed_runs(archive)
        files = mf.load_manifest(archive, runs[-1]).files if runs else ()
        data_format = str(files[0].format) if files else "parquet"
    text = make_ddl(location or archive.url, engine, data_format, table)
    if as_json:
        emit({"command": "ddl", "engine": engine, "data_format": data_format, "ddl": text})
    else:
        click.echo(text, nl=False)
