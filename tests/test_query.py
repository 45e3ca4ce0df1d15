"""The archive as a table: `query` (DuckDB), pyarrow datasets and polars agree with the counts
taken from the backend before archiving, on disk and on S3 (moto's server); partition pruning;
only committed runs; DDL for each engine; Iceberg snapshots; a v1 archive still reads."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, age_rows, celery_app, cli, table_rows
from test_sql_archive import write_results

FIXTURE = ROOT / "tests" / "fixtures" / "archive-v1"


def archive_two_formats(url: str, sink: str) -> Counter[str]:
    """Results over three days, archived by a Parquet run and a JSONL (zstd) run; returns the
    counts by status the backend held before (groups as "(group)"), and under "parquet" how
    many the Parquet run took."""
    app = celery_app(url)
    write_results(app)
    age_rows(url, 40, "task_id like 'ok-1%'")
    age_rows(url, 36, "task_id like 'ok-2%'")
    age_rows(url, 33, "task_id not like 'ok-1%' and task_id not like 'ok-2%'")
    age_rows(url, 40, table="celery_tasksetmeta")
    before = Counter(r["status"] for r in table_rows(url).values() if r["status"] != "STARTED")
    before["(group)"] = len(table_rows(url, "celery_tasksetmeta"))
    for args in (["--older-than", "35d"], ["--older-than", "30d", "--format", "jsonl", "--compression", "zstd"]):
        proc = cli("run", "--source", url, "--sink", sink, *args, "--json")
        assert proc.returncode == 0, proc.stderr
        before["parquet"] = before["parquet"] or json.loads(proc.stdout)["archived"]
    return before


def query_json(sink: str, sql: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    proc = cli("query", "--sink", sink, sql, "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def by_status_sql() -> str:
    return "select coalesce(status, '(group)') as status, count(*) as n from results group by 1"


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_query_duckdb_pyarrow_polars_agree_with_the_backend(sqlite_url: str, tmp_path: Path, where: str,
                                                            request: pytest.FixtureRequest) -> None:
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        sink = f"s3://{bucket}/archive"
    else:
        sink = str(tmp_path / "archive")
    before = archive_two_formats(sqlite_url, sink)
    parquet_count = before.pop("parquet")
    assert sum(before.values()) == 30 and 0 < parquet_count < 30

    rows = query_json(sink, by_status_sql())
    assert {r["status"]: r["n"] for r in rows} == dict(before)  # DuckDB over both formats
    days = query_json(sink, "select date, count(*) as n from results group by 1 order by 1")
    assert len(days) == 3 and sum(d["n"] for d in days) == 30

    # pyarrow datasets and polars read the Parquet files in place, Hive partitions included
    import polars as pl
    import pyarrow.dataset as ds

    from celery_archive.sinks import open_sink
    from celery_archive.warehouse.query import archive_files, parquet_dataset

    files = archive_files(open_sink(sink))
    table = parquet_dataset(files).to_table()  # type: ignore[union-attr]
    assert table.num_rows == parquet_count
    arrow_counts = Counter(s or "(group)" for s in table["status"].to_pylist())
    if where == "disk":
        frame = pl.scan_parquet(f"{sink}/data/*/*.parquet", hive_partitioning=True)
        plain = ds.dataset(sorted(str(p) for p in Path(sink).glob("data/*/*.parquet")), format="parquet", partitioning="hive",
                           partition_base_dir=f"{sink}/data").to_table(columns=["status", "date"])
        assert Counter(s or "(group)" for s in plain["status"].to_pylist()) == arrow_counts
    else:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        frame = pl.scan_parquet(f"{sink}/data/*/*.parquet", hive_partitioning=True, storage_options={
            "aws_endpoint_url": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret",
            "aws_region": "us-east-1", "aws_allow_http": "true"})
    polars_counts = frame.group_by("status").len().collect()
    assert {(s or "(group)"): n for s, n in polars_counts.iter_rows()} == dict(arrow_counts)
    # and with the JSONL run's results, the two make up exactly what the backend held
    jsonl = query_json(sink, "select coalesce(status, '(group)') as status, count(*) as n from results "
                             "where date = (select max(date) from results) group by 1")  # the JSONL run's day
    assert arrow_counts + Counter({r["status"]: r["n"] for r in jsonl}) == before


def test_a_date_filter_reads_only_that_days_files(sqlite_url: str, tmp_path: Path) -> None:
    sink = tmp_path / "archive"
    archive_two_formats(sqlite_url, str(sink))
    days = sorted(p.name.removeprefix("date=") for p in (sink / "data").iterdir())
    assert len(days) == 3
    # break every file but the last day's (a Parquet day, a JSONL day): a query for that day
    # still works, so the others were never opened
    last = days[-1]
    for path in (sink / "data").rglob("*"):
        if path.is_file() and f"date={last}" not in str(path):
            path.write_bytes(b"not what was archived")
    rows = query_json(str(sink), f"select count(*) as n from results where date = '{last}'")
    assert rows[0]["n"] > 0
    proc = cli("query", "--sink", str(sink), "select count(*) from results")
    assert proc.returncode != 0 and "the query failed" in proc.stderr


def test_only_committed_runs_are_read(sqlite_url: str, tmp_path: Path) -> None:
    sink = tmp_path / "archive"
    archive_two_formats(sqlite_url, str(sink))
    total = query_json(str(sink), "select count(*) as n from results")[0]["n"]
    some = next((sink / "data").rglob("*.parquet"))
    shutil.copy(some, some.with_name("20991231T000000Z-abcdef-00001.parquet"))  # a file no manifest names
    assert query_json(str(sink), "select count(*) as n from results")[0]["n"] == total


def test_output_formats_and_errors(sqlite_url: str, tmp_path: Path) -> None:
    sink = str(tmp_path / "archive")
    archive_two_formats(sqlite_url, sink)
    proc = cli("query", "--sink", sink, "--format", "csv", "select task_id, status from results where name = 'shop.charge' order by 1")
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["task_id,status", "fail-0,FAILURE", "fail-1,FAILURE", "fail-2,FAILURE"]
    proc = cli("query", "--sink", sink, "select task_id, raw_result, date from results where task_id = 'ok-3'", "--json")
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    import base64

    assert json.loads(base64.b64decode(row["raw_result"]))["n"] == 3 and len(row["date"]) == 10
    proc = cli("query", "--sink", sink, "select task_id from results limit 2")
    assert proc.returncode == 0 and "task_id" in proc.stdout and "2 row(s)" in proc.stdout
    proc = cli("query", "--sink", sink, "select nope from results")
    assert proc.returncode == 2 and "the query failed" in proc.stderr and "results" in proc.stderr
    empty = tmp_path / "empty"
    assert query_json(str(empty), "select count(*) as n from results") == [{"n": 0}]


def test_ddl_for_every_engine(sqlite_url: str, tmp_path: Path) -> None:
    import duckdb
    import sqlglot

    sink = str(tmp_path / "archive")
    archive_two_formats(sqlite_url, sink)
    total = query_json(sink, "select count(*) as n from results")[0]["n"]
    for fmt in ("parquet", "jsonl"):
        proc = cli("ddl", "--sink", sink, "--engine", "duckdb", "--data-format", fmt)
        assert proc.returncode == 0, proc.stderr
        con = duckdb.connect()
        con.execute(proc.stdout)
        n = con.sql("select count(*) from celery_results").fetchall()[0][0]
        assert 0 < n < total  # the files of that format
        assert con.sql("select count(distinct date) from celery_results").fetchall()[0][0] >= 1
    for engine, dialect in (("athena", "athena"), ("trino", "trino"), ("spark", "spark")):
        for fmt in ("parquet", "jsonl"):
            proc = cli("ddl", "--sink", "s3://bucket/prefix", "--engine", engine, "--data-format", fmt)
            assert proc.returncode == 0, proc.stderr
            create = sqlglot.parse(proc.stdout, read=dialect)[0]
            assert isinstance(create, sqlglot.exp.Create)
            columns = [c.name for c in create.find_all(sqlglot.exp.ColumnDef)]
            assert columns[:3] == ["task_id", "kind", "status"] and "raw_result" in columns
            assert "s3://bucket/prefix/data" in proc.stdout
    athena = cli("ddl", "--sink", "s3://bucket/prefix", "--engine", "athena", "--data-format", "parquet").stdout
    assert "'projection.date.type' = 'date'" in athena and "storage.location.template" in athena
    assert "sync_partition_metadata" in cli("ddl", "--sink", "s3://b/p", "--engine", "trino", "--data-format", "parquet").stdout
    assert "MSCK REPAIR TABLE" in cli("ddl", "--sink", "s3://b/p", "--engine", "spark", "--data-format", "parquet").stdout
    bq = cli("ddl", "--sink", sink, "--location", "gs://bucket/prefix", "--engine", "bigquery", "--data-format", "parquet").stdout
    assert "hive_partition_uri_prefix = 'gs://bucket/prefix/data'" in bq and "WITH PARTITION COLUMNS (`date` DATE)" in bq
    proc = cli("ddl", "--sink", sink, "--engine", "athena", "--json")
    assert json.loads(proc.stdout)["data_format"] == "jsonl"  # the latest run's


def test_iceberg_snapshot_per_run(sqlite_url: str, tmp_path: Path) -> None:
    env = {"PYICEBERG_CATALOG__LOCAL__TYPE": "sql", "PYICEBERG_CATALOG__LOCAL__URI": f"sqlite:///{tmp_path / 'catalog.db'}",
           "PYICEBERG_CATALOG__LOCAL__WAREHOUSE": f"file://{tmp_path / 'warehouse'}"}
    app = celery_app(sqlite_url)
    write_results(app)
    age_rows(sqlite_url, 40, "task_id like 'ok-%'")
    age_rows(sqlite_url, 33, "task_id not like 'ok-%'")
    age_rows(sqlite_url, 40, table="celery_tasksetmeta")
    sink = str(tmp_path / "archive")
    first = cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "35d", "--json")  # no Iceberg yet
    assert first.returncode == 0
    second = cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d", "--json",
                 "--iceberg-table", "celery.results", "--iceberg-catalog", "local", env=env)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    runs = [json.loads(first.stdout)["run_id"], report["run_id"]]
    assert report["iceberg_runs"] == runs  # the earlier run is appended too, first
    from pyiceberg.catalog import load_catalog

    # pyiceberg reads its environment once per process: the same settings, given
    props = {k.removeprefix("PYICEBERG_CATALOG__LOCAL__").lower(): v for k, v in env.items()}
    table = load_catalog("local", **props).load_table("celery.results")
    assert [s.summary["celery-archive.run-id"] for s in table.snapshots()] == runs
    scanned = table.scan().to_arrow()
    archived = query_json(sink, "select task_id, kind from results")
    assert sorted(zip(scanned["task_id"].to_pylist(), scanned["kind"].to_pylist())) == sorted(
        (r["task_id"], r["kind"]) for r in archived)
    assert scanned.num_rows == 30
    again = cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d", "--json",
                "--iceberg-table", "celery.results", "--iceberg-catalog", "local", env=env)
    assert json.loads(again.stdout)["iceberg_runs"] == [json.loads(again.stdout)["run_id"]]  # nothing twice


def test_a_v1_archive_still_reads(tmp_path: Path) -> None:
    """Kept as written by record schema v1: the reader of today (and of later versions, whose
    extra columns come back null for v1 files) reads, verifies and restores it."""
    import pyarrow as pa

    from celery_archive.schemas import arrow_schema
    from celery_archive.sinks import open_sink
    from celery_archive.warehouse.query import ArchiveFiles, archive_files, parquet_dataset

    sink = tmp_path / "archive-v1"
    shutil.copytree(FIXTURE, sink)
    rows = query_json(str(sink), by_status_sql())
    assert {r["status"]: r["n"] for r in rows} == {"SUCCESS": 25, "FAILURE": 3, "REVOKED": 1, "(group)": 1}
    assert cli("verify", "--sink", str(sink)).returncode == 0
    proc = cli("restore", "ok-3", "fail-1", "--sink", str(sink), "--json")
    assert proc.returncode == 0 and {json.loads(line)["task_id"] for line in proc.stdout.splitlines()} == {"ok-3", "fail-1"}
    # a later schema with one more column still reads the v1 files: the new column is null
    files = archive_files(open_sink(str(sink)))
    later = arrow_schema().append(pa.field("added_in_v2", pa.string()))
    import pyarrow.dataset as ds

    dataset = ds.dataset(files.parquet, schema=later, format="parquet", filesystem=files.filesystem)
    table = dataset.to_table()
    assert table.num_rows == 26 and table["added_in_v2"].null_count == 26
    assert isinstance(files, ArchiveFiles) and parquet_dataset(files) is not None


def test_iceberg_on_s3(sqlite_url: str, s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    """The archive and the Iceberg warehouse on S3 (moto), the catalog configured as pyiceberg's."""
    env = {"PYICEBERG_CATALOG__S3CAT__TYPE": "sql", "PYICEBERG_CATALOG__S3CAT__URI": f"sqlite:///{tmp_path / 'cat.db'}",
           "PYICEBERG_CATALOG__S3CAT__WAREHOUSE": f"s3://{s3_bucket}/warehouse", "PYICEBERG_CATALOG__S3CAT__S3__ENDPOINT": s3_endpoint,
           "PYICEBERG_CATALOG__S3CAT__S3__ACCESS_KEY_ID": "testing", "PYICEBERG_CATALOG__S3CAT__S3__SECRET_ACCESS_KEY": "testing-secret",
           "PYICEBERG_CATALOG__S3CAT__S3__REGION": "us-east-1"}
    app = celery_app(sqlite_url)
    for i in range(10):
        app.backend.store_result(f"t{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40)
    proc = cli("run", "--source", sqlite_url, "--sink", f"s3://{s3_bucket}/arch", "--older-than", "30d", "--json",
               "--iceberg-table", "ns.results", "--iceberg-catalog", "s3cat", env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["iceberg_runs"]) == 1
    from pyiceberg.catalog import load_catalog

    # this process read pyiceberg's environment when it first imported it: the same settings, given
    props = {k.removeprefix("PYICEBERG_CATALOG__S3CAT__").lower().replace("__", "."): v for k, v in env.items()}
    table = load_catalog("s3cat", **props).load_table("ns.results")
    assert sorted(table.scan().to_arrow()["task_id"].to_pylist()) == [f"t{i}" for i in range(10)]
    assert all(f.startswith(f"s3://{s3_bucket}/arch/data/date=") for f in table.inspect.files()["file_path"].to_pylist())


def test_iceberg_table_of_an_earlier_record_version_gains_the_new_columns(sqlite_url: str, tmp_path: Path) -> None:
    """A table created for record schema v1 (before raw_date_done and raw_key) is evolved by
    name when a run appends v2 files; the v1 fixture's files and the new run's both scan."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.transforms import DayTransform

    from celery_archive.schemas import arrow_schema

    props = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": f"file://{tmp_path / 'warehouse'}"}
    env = {f"PYICEBERG_CATALOG__OLD__{k.upper()}": v for k, v in props.items()}
    sink = tmp_path / "archive"
    shutil.copytree(FIXTURE, sink)
    for jsonl_run in sink.rglob("*68939b*"):  # the fixture's JSONL run: an Iceberg table holds Parquet
        jsonl_run.unlink()
    catalog = load_catalog("old", **props)
    catalog.create_namespace("celery")
    old = catalog.create_table("celery.results", schema=arrow_schema(1))
    with old.update_spec() as spec:
        spec.add_field("date_done", DayTransform(), "date_done_day")
    app = celery_app(sqlite_url)
    for i in range(5):
        app.backend.store_result(f"new-{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40)
    proc = cli("run", "--source", sqlite_url, "--sink", str(sink), "--older-than", "30d", "--json",
               "--iceberg-table", "celery.results", "--iceberg-catalog", "old", env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["iceberg_runs"]) == 2  # the fixture's Parquet run, then this one
    table = load_catalog("old", **props).load_table("celery.results")
    assert {"raw_date_done", "raw_key"} <= {f.name for f in table.schema().fields}
    scanned = table.scan().to_arrow()
    assert sorted(t for t in scanned["task_id"].to_pylist() if t.startswith("new-")) == [f"new-{i}" for i in range(5)]
    assert scanned.num_rows == 26 + 5
