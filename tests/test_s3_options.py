"""S3 write options (encryption, storage class, Object Lock, legal hold, tags), retries, and the
messages for what goes wrong on S3: on moto's server, and on LocalStack for what moto cannot do
(a wrong checksum refused, COMPLIANCE retention that cannot be shortened, SSE-KMS)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import age_rows, celery_app, cli, new_bucket, s3_client, table_rows
from helpers import free_port, write_sql_results
from s3_faults import fault_proxy, s3_error

OPTIONS = "sse=AES256&storage_class=STANDARD_IA&object_lock=GOVERNANCE&retain=30d&legal_hold=on&tag=team=billing&tag=env=prod"


def _archive(url: str, sink: str, env: dict[str, str] | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
    app = celery_app(url)
    write_sql_results(app)
    age_rows(url, 40)
    return cli("run", "--source", url, "--sink", sink, "--older-than", "30d", "--json", *extra, env=env)


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_write_options_reach_every_object(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3, lock=True)
    sink = f"s3://{bucket}/arch?{OPTIONS}"
    started = dt.datetime.now(dt.timezone.utc)
    proc = _archive(sqlite_url, sink)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == 29

    data = [k for k in _keys(s3, bucket, "arch/data/")]
    manifests = _keys(s3, bucket, "arch/manifests/")
    index = _keys(s3, bucket, "arch/index/")
    assert data and manifests and index
    for key in data + manifests:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockLegalHoldStatus"] == "ON"
        until = head["ObjectLockRetainUntilDate"]
        assert started + dt.timedelta(days=30) - dt.timedelta(minutes=1) <= until <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags == {"team": "billing", "env": "prod"}
    assert all(s3.head_object(Bucket=bucket, Key=k).get("StorageClass") == "STANDARD_IA" for k in data)
    assert all(s3.head_object(Bucket=bucket, Key=k).get("StorageClass", "STANDARD") == "STANDARD" for k in manifests + index)
    # the index is replaced by compaction: no lock on it
    assert all("ObjectLockMode" not in s3.head_object(Bucket=bucket, Key=k) for k in index)

    # a locked version cannot be deleted (GOVERNANCE without the bypass permission)
    version = s3.head_object(Bucket=bucket, Key=data[0])["VersionId"]
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=data[0], VersionId=version)
    # the locked archive reads back, verifies and restores as any other
    assert cli("verify", "--sink", sink).returncode == 0
    assert cli("restore", "ok-3", "--sink", sink, "--into", sqlite_url).returncode == 0
    assert "ok-3" in table_rows(sqlite_url)


def test_object_lock_needs_a_bucket_with_object_lock(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3)
    proc = _archive(sqlite_url, f"s3://{bucket}/a?object_lock=COMPLIANCE&retain=7y")
    assert proc.returncode == 1
    err = json.loads(proc.stdout)["error"]
    assert f"bucket {bucket} does not have Object Lock enabled" in err and "--object-lock-enabled-for-bucket" in err
    assert _keys(s3, bucket, "a/") == []  # refused before anything was written
    assert len(table_rows(sqlite_url)) == 30  # nothing deleted


@pytest.mark.parametrize("query,message", [
    ("object_lock=FOREVER&retain=1d", "use COMPLIANCE or GOVERNANCE"),
    ("retain=30d", "object_lock and retain go together"),
    ("sse=des", "use sse=AES256"),
    ("sse=AES256&kms_key_id=k", "kms_key_id goes with sse=aws:kms"),
    ("storage_class=COLD", "use one of STANDARD"),
    ("tag=novalue", "use tag=key=value"),
    ("retention=1d", "unknown S3 sink option 'retention'"),
    ("object_lock=COMPLIANCE&retain=soon", "invalid duration 'soon'"),
])
def test_bad_sink_options_are_named(s3_endpoint: str, query: str, message: str) -> None:
    proc = cli("verify", "--sink", f"s3://b/p?{query}")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_throttling_and_server_errors_are_retried(sqlite_url: str, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3)
    failures = {"PUT data": 2, "GET data": 1, "PUT manifests": 1}

    def rule(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        for what, left in failures.items():
            verb, prefix = what.split()
            if left and method == verb and f"/{bucket}/r/{prefix}/" in path:
                failures[what] -= 1
                if verb == "GET":
                    return s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
                return s3_error(503, "SlowDown", "Please reduce your request rate.")
        return None

    with fault_proxy(s3_endpoint, rule) as (proxy, log):
        proc = _archive(sqlite_url, f"s3://{bucket}/r", {"AWS_ENDPOINT_URL": proxy})
        assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == 29
    injected = [line for line in log if "(injected)" in line]
    assert len(injected) == 4 and failures == {"PUT data": 0, "GET data": 0, "PUT manifests": 0}
    # each refused request was sent again and then succeeded
    assert any(" /" + bucket + "/r/data/" in line and line.startswith("PUT") and line.endswith("-> 200") for line in log)
    assert cli("verify", "--sink", f"s3://{bucket}/r").returncode == 0


def test_retry_attempts_follow_aws_max_attempts(s3_endpoint: str) -> None:
    """An S3 that keeps answering 503: AWS_MAX_ATTEMPTS requests, then a clear error."""
    def rule(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        return s3_error(503, "SlowDown", "Please reduce your request rate.")

    for attempts in ("2", "3"):
        with fault_proxy(s3_endpoint, rule) as (proxy, log):
            proc = cli("runs", "--sink", "s3://busy-bucket/p", env={"AWS_ENDPOINT_URL": proxy, "AWS_MAX_ATTEMPTS": attempts})
        assert proc.returncode == 1 and "SlowDown" in proc.stderr, proc.stderr
        assert len(log) == int(attempts)  # the first request, retried until the attempts ran out
    proc = cli("runs", "--sink", "s3://b/p", env={"AWS_MAX_ATTEMPTS": "many"})
    assert proc.returncode == 2 and "AWS_MAX_ATTEMPTS='many'" in proc.stderr


def test_wrong_region_is_named(s3_endpoint: str) -> None:
    def rule(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        return s3_error(301, "PermanentRedirect", "The bucket you are attempting to access must be addressed using the "
                        "specified endpoint.", **{"x-amz-bucket-region": "eu-west-1"})

    with fault_proxy(s3_endpoint, rule) as (proxy, _):
        proc = cli("runs", "--sink", "s3://eu-bucket/p", env={"AWS_ENDPOINT_URL": proxy})
    assert proc.returncode == 1
    assert "bucket eu-bucket is in another region (eu-west-1): set AWS_REGION" in proc.stderr, proc.stderr


def test_access_denied_is_named_without_the_secret(tmp_path: Path) -> None:
    """moto's server with authentication on: a user without any S3 permission is refused."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                bucket = new_bucket(s3_client(endpoint))  # unauthenticated action 1
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing-secret")
        iam.create_user(UserName="reader")  # 2
        key = iam.create_access_key(UserName="reader")["AccessKey"]  # 3: from here on, every request is checked
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        proc = cli("verify", "--sink", f"s3://{bucket}/p", env=env)
        assert proc.returncode == 1
        assert f"access denied to s3://{bucket}/p" in proc.stderr and "check the credentials and the bucket policy" in proc.stderr
        assert key["SecretAccessKey"] not in proc.stderr + proc.stdout
    finally:
        server.kill()
        server.wait()


# --- LocalStack: what moto does not check ---------------------------------------------------


@pytest.fixture
def ls_env(localstack: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": localstack, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_DEFAULT_REGION": "us-east-1"}


def test_a_wrong_checksum_is_refused(localstack: str, ls_env: dict[str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool file that changed after it was hashed never lands in the archive."""
    import hashlib

    from celery_archive.errors import SinkError
    from celery_archive.sinks import open_sink

    for k, v in ls_env.items():
        monkeypatch.setenv(k, v)
    bucket = new_bucket(s3_client(localstack))
    sink = open_sink(f"s3://{bucket}/a")
    src = tmp_path / "f.parquet"
    src.write_bytes(b"what was written")
    written = hashlib.sha256(src.read_bytes()).hexdigest()
    src.write_bytes(b"what was written, then changed")
    with pytest.raises(SinkError, match="do not match the SHA-256 taken when the file was written"):
        sink.put("data/date=2026-01-01/f.parquet", src, written)
    assert list(sink.list()) == []
    src.write_bytes(b"what was written")
    assert sink.put("data/date=2026-01-01/f.parquet", src, written).size == 16


def test_compliance_retention_cannot_be_shortened(sqlite_url: str, localstack: str, ls_env: dict[str, str]) -> None:
    s3 = s3_client(localstack, key="test", secret="test-secret")
    bucket = new_bucket(s3, lock=True)
    sink = f"s3://{bucket}/c?object_lock=COMPLIANCE&retain=1d"
    proc = _archive(sqlite_url, sink, ls_env)
    assert proc.returncode == 0, proc.stderr
    key = _keys(s3, bucket, "c/data/")[0]
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    retention = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):  # shorten it
        s3.put_object_retention(Bucket=bucket, Key=key, Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)})
    with pytest.raises(ClientError):  # delete the locked version, even with the governance bypass
        s3.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"], BypassGovernanceRetention=True)
    assert s3.head_object(Bucket=bucket, Key=key)["VersionId"] == head["VersionId"]
    assert cli("verify", "--sink", sink, env=ls_env).returncode == 0


def test_sse_kms_with_a_key_id(sqlite_url: str, localstack: str, ls_env: dict[str, str]) -> None:
    import boto3

    kms = boto3.client("kms", endpoint_url=localstack, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test-secret")
    key_id = kms.create_key(Description="celery-archive test")["KeyMetadata"]["KeyId"]
    s3 = s3_client(localstack, key="test", secret="test-secret")
    bucket = new_bucket(s3)
    sink = f"s3://{bucket}/k?sse=aws:kms&kms_key_id={key_id}"
    proc = _archive(sqlite_url, sink, ls_env)
    assert proc.returncode == 0, proc.stderr
    for key in _keys(s3, bucket, "k/"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
    assert cli("verify", "--sink", sink, env=ls_env).returncode == 0
    proc = cli("restore", "ok-3", "--sink", sink, "--json", env=ls_env)
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[0])["task_id"] == "ok-3"


def test_localstack_init_script_creates_the_buckets(localstack: str, ls_env: dict[str, str]) -> None:
    from conftest import ROOT

    env = {**os.environ, **ls_env, "AWS_CLI": str(ROOT / "localstack/.venv/bin/aws")}
    for _ in range(2):  # idempotent
        proc = subprocess.run(["bash", str(ROOT / "localstack/init-buckets.sh"), "ca-init"], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    s3 = s3_client(localstack, key="test", secret="test-secret")
    assert s3.get_object_lock_configuration(Bucket="ca-init-locked")["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    s3.head_bucket(Bucket="ca-init")
    import yaml

    compose = yaml.safe_load((ROOT / "localstack/compose.yaml").read_text())
    ls = compose["services"]["localstack"]
    assert ls["ports"] == ["127.0.0.1:4566:4566"]  # loopback only
    assert any(v.startswith("./init-buckets.sh:/etc/localstack/init/ready.d/") for v in ls["volumes"])
