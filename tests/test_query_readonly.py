"""`query` only reads the archive (issue 14, item 7): one SELECT or EXPLAIN over `results`,
with DuckDB's external access off and its configuration locked once the view is made. A
write, a host file, the network or an extension gets a clear error (exit 2) and changes
nothing; the archive's own Parquet and JSONL files still scan, on disk and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli
from test_query import archive_two_formats, by_status_sql, query_json

REFUSED = "query only reads the archive's table `results`"


@pytest.fixture
def local_archive(sqlite_url: str, tmp_path: Path) -> str:
    sink = str(tmp_path / "archive")
    archive_two_formats(sqlite_url, sink)
    return sink


@pytest.mark.parametrize("sql,says", [
    ("COPY results TO '{tmp}/out.csv'", "this is COPY"),
    ("COPY (select * from results) TO '{tmp}/out.parquet' (FORMAT parquet)", "this is COPY"),
    ("ATTACH '{tmp}/new.duckdb' AS x", "this is ATTACH"),
    ("EXPORT DATABASE '{tmp}/exported'", "this is EXPORT"),
    ("INSTALL httpfs", "this is LOAD"),
    ("LOAD httpfs", "this is LOAD"),
    ("CREATE TABLE t AS SELECT 1", "this is CREATE"),
    ("SET enable_external_access = true", "this is SET"),
    ("select 1; COPY results TO '{tmp}/out.csv'", "this is SELECT + COPY"),
    ("", "this is an empty query"),
    ("select * from read_text('/etc/hostname')", "reads a host file or the network"),
    ("select * from read_csv('/etc/passwd')", "reads a host file or the network"),
    ("select * from read_parquet('{tmp}/archive/data/*/*.parquet')", "reads a host file or the network"),
    ("select * from glob('/etc/*')", "reads a host file or the network"),
    ("select * from read_json('http://127.0.0.1:9/x.json')", "reads a host file or the network"),
    ("EXPLAIN ANALYZE COPY results TO '{tmp}/out.csv'", "reads a host file or the network"),
])
def test_anything_but_reading_the_archive_is_refused(local_archive: str, tmp_path: Path, sql: str, says: str) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--json"]):
        out = cli("query", "--sink", local_archive, sql.replace("{tmp}", str(tmp_path)), *extra)
        assert out.returncode == 2, out.stdout + out.stderr
        message = json.loads(out.stdout)["error"] if extra else out.stderr
        assert REFUSED in message and says in message and "give one SELECT" in message
        assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was written


def test_reads_still_work_after_the_lockdown(local_archive: str) -> None:
    rows = query_json(local_archive, by_status_sql())
    assert sum(r["n"] for r in rows) > 0
    assert query_json(local_archive, "with d as (select date, count(*) as n from results group by 1) select count(*) as days from d") == [{"days": 3}]
    assert any(r["column_name"] == "raw_key" for r in query_json(local_archive, "describe results"))
    assert query_json(local_archive, "select current_setting('enable_external_access') as v") == [{"v": False}]
    out = cli("query", "--sink", local_archive, "explain select count(*) from results")
    assert out.returncode == 0, out.stderr


def test_the_lockdown_on_an_s3_archive(sqlite_url: str, s3_bucket: str, tmp_path: Path) -> None:
    """The S3 dataset is scanned by pyarrow's S3 filesystem: external access off in DuckDB
    does not stop it, but a query reaching S3 itself (httpfs) is refused."""
    sink = f"s3://{s3_bucket}/prod"
    before = archive_two_formats(sqlite_url, sink)  # a Parquet run and a JSONL run
    rows = {r["status"]: r["n"] for r in query_json(sink, by_status_sql())}
    assert rows == {k: v for k, v in before.items() if k != "parquet"}
    out = cli("query", "--sink", sink, f"select count(*) from read_parquet('s3://{s3_bucket}/prod/data/*/*.parquet')")
    assert out.returncode == 2 and REFUSED in out.stderr
