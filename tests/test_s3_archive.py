"""An archive on S3 (moto's server over real HTTP): run, verify, restore, and a warehouse
reading it in place."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from conftest import age_rows, celery_app, cli, table_rows
from test_sql_archive import write_results

from celery_archive.restore.search import find


def test_run_verify_restore_on_s3(sqlite_url: str, s3_bucket: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    write_results(app)
    age_rows(sqlite_url, 40)
    before = app.AsyncResult("ok-3").result
    sink = f"s3://{s3_bucket}/celery/prod"
    proc = cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verified"] == report["deleted"] == 29
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="celery/prod/")["Contents"]]
    assert any(k.startswith("celery/prod/data/date=") and k.endswith(".parquet") for k in keys)
    assert f"celery/prod/manifests/{report['run_id']}.json" in keys
    data_key = next(k for k in keys if k.endswith(".parquet"))
    head = s3.head_object(Bucket=s3_bucket, Key=data_key, ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")  # uploaded with an SHA-256 the store checked

    assert cli("verify", "--sink", sink).returncode == 0
    found = find(sink, ["ok-3"])
    assert found.records[0]["task_id"] == "ok-3" and found.reads <= 3
    proc = cli("restore", "ok-3", "--sink", sink, "--into", sqlite_url)
    assert proc.returncode == 0, proc.stderr
    assert app.AsyncResult("ok-3").result == before and "ok-3" in table_rows(sqlite_url)

    # pyarrow and DuckDB read the archive in place, Hive date= partitions included
    import duckdb
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    endpoint = s3.meta.endpoint_url
    fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing-secret", region="us-east-1")
    dataset = ds.dataset(f"{s3_bucket}/celery/prod/data", filesystem=fs, format="parquet", partitioning="hive")
    assert dataset.count_rows() == 29
    con = duckdb.connect()
    con.register("results", dataset)
    rows = con.sql("select status, count(*) from results group by status order by status").fetchall()
    assert rows == [("FAILURE", 3), ("REVOKED", 1), ("SUCCESS", 25)]


def test_a_corrupted_object_fails_verify_and_blocks_nothing_else(sqlite_url: str, s3_bucket: str) -> None:
    app = celery_app(sqlite_url)
    write_results(app)
    age_rows(sqlite_url, 40)
    sink = f"s3://{s3_bucket}/a"
    assert cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d", "--no-delete").returncode == 0
    s3 = boto3.client("s3")
    key = next(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="a/data/")["Contents"])
    s3.delete_object(Bucket=s3_bucket, Key=key)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"PAR1 not really")
    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 3 and ("sha256" in proc.stdout or "bytes stored" in proc.stdout)
    proc = cli("run", "--source", sqlite_url, "--sink", sink, "--older-than", "30d", "--json")
    assert proc.returncode == 3  # the earlier run's purge is blocked: nothing was deleted
    assert len(table_rows(sqlite_url)) == 30  # every result is still in the backend


@pytest.mark.parametrize("url,message", [
    ("s3://no-such-bucket-here/x", "does not exist"),
])
def test_clear_errors(s3_endpoint: str, url: str, message: str) -> None:
    proc = cli("verify", "--sink", url)
    assert proc.returncode != 0 and message in proc.stderr and "testing-secret" not in proc.stderr


def test_unreachable_endpoint() -> None:
    proc = cli("runs", "--sink", "s3://b/p", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                                                 "AWS_SECRET_ACCESS_KEY": "very-secret", "AWS_MAX_ATTEMPTS": "1"})
    assert proc.returncode == 1 and "cannot reach the S3 endpoint" in proc.stderr and "very-secret" not in proc.stderr


def test_large_files_go_up_in_parts_and_stay_create_only(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_archive.errors import ObjectExistsError
    from celery_archive.sinks import open_sink
    from celery_archive.sinks import s3 as s3mod

    monkeypatch.setattr(s3mod, "MULTIPART_BYTES", 1 << 20)  # our threshold, not boto3's behaviour
    monkeypatch.setattr(s3mod, "PART_BYTES", 5 << 20)
    src = tmp_path / "big.bin"
    data = bytes(range(256)) * (12 * 4096 + 7)  # ~12 MiB: three parts
    src.write_bytes(data)
    sink = open_sink(f"s3://{s3_bucket}/p")
    assert sink.put("data/big.bin", src).size == len(data)
    assert sink.read("data/big.bin", 5 << 20, 10) == data[5 << 20:(5 << 20) + 10]
    with sink.open("data/big.bin") as f:
        assert f.read() == data
    with pytest.raises(ObjectExistsError):
        sink.put("data/big.bin", src)
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []  # the refused upload was aborted, not left behind
