"""encrypt=kms:KEY: data keys from AWS KMS (GenerateDataKey, Decrypt), on LocalStack's KMS with
its S3 under Object Lock COMPLIANCE; KMS access denials (moto's KMS with IAM enforced, which
LocalStack's community KMS does not do) name the key and the permission, never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import orjson
import pytest
from conftest import age_rows, celery_app, cli, new_bucket, s3_client, table_rows
from forget_support import make_archive, restored
from helpers import free_port, write_sql_results


def test_kms_on_localstack_with_compliance_lock(sqlite_url: str, on_localstack: str) -> None:
    kms = boto3.client("kms")
    key = kms.create_key()["KeyMetadata"]
    alias = f"alias/celery-archive-{key['KeyId'][:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    s3 = s3_client(on_localstack, key="test", secret="test-secret")
    bucket = new_bucket(s3, lock=True)
    sink = f"s3://{bucket}/prod?object_lock=COMPLIANCE&retain=1d&encrypt=kms:{alias}"
    ids = make_archive(sqlite_url, sink, again=())
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="prod/keys/")["Contents"]]
    body = orjson.loads(s3.get_object(Bucket=bucket, Key=listed[0])["Body"].read())
    assert body["master"] == f"kms:{alias}" and "Retention" not in str(s3.head_object(Bucket=bucket, Key=listed[0]))
    assert s3.head_object(Bucket=bucket, Key=listed[0]).get("ObjectLockMode") is None  # keys/ is never locked

    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout
    proc = cli("forget", "r-007", "--sink", sink, "--reason", "erasure 118", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    destroyed = json.loads(proc.stdout)["keys_destroyed"]
    assert len(destroyed) == 1 and not s3.list_object_versions(Bucket=bucket, Prefix=f"prod/{destroyed[0]}").get("Versions")
    proc = cli("restore", "r-007", "--sink", sink)
    assert proc.returncode == 5, proc.stderr
    assert sorted(restored(sink, [t for t in ids if t != "r-007"])) == [t for t in ids if t != "r-007"]


@pytest.fixture(scope="module")
def iam_kms() -> Iterator[str]:
    """moto's server in a process of its own with IAM enforced (after the first 9 requests, which
    make the key and three users: one that may only generate data keys, one that may do nothing,
    one that may do both): the KMS endpoint."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "9"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)  # not an AWS request: not counted
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_kms_access_denied_names_key_and_permission(tmp_path: Path, iam_kms: str) -> None:
    admin = dict(endpoint_url=iam_kms, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    arn = boto3.client("kms", **admin).create_key()["KeyMetadata"]["Arn"]  # type: ignore[arg-type]
    iam = boto3.client("iam", **admin)  # type: ignore[arg-type]
    iam.create_user(UserName="archiver")
    ak = iam.create_access_key(UserName="archiver")["AccessKey"]
    iam.put_user_policy(UserName="archiver", PolicyName="generate-only", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["kms:GenerateDataKey"], "Resource": "*"}]}))
    iam.create_user(UserName="nobody")
    nobody = iam.create_access_key(UserName="nobody")["AccessKey"]
    iam.create_user(UserName="full")
    full = iam.create_access_key(UserName="full")["AccessKey"]
    iam.put_user_policy(UserName="full", PolicyName="both", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*"}]}))

    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    write_sql_results(celery_app(url))
    age_rows(url, 40)
    before = table_rows(url)
    sink = f"file://{tmp_path / 'archive'}?encrypt=kms:{arn}"
    for creds, permission in ((nobody, "kms:GenerateDataKey"), (ak, "kms:Decrypt")):
        env = {"AWS_ENDPOINT_URL_KMS": iam_kms, "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
        proc = cli("run", "--source", url, "--sink", sink, "--older-than", "30d", env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in out, out
        assert f"KMS denied {permission} on key {arn}" in out and f"grant {permission}" in out, out
        assert creds["SecretAccessKey"] not in out
        assert table_rows(url) == before  # nothing left the source

    # the run that could not read its files back committed them unpurged: the next run (allowed
    # both) verifies and purges them, and archives the rest
    root = tmp_path / "archive"
    env = {"AWS_ENDPOINT_URL_KMS": iam_kms, "AWS_ACCESS_KEY_ID": full["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": full["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
    proc = cli("run", "--source", url, "--sink", sink, "--older-than", "30d", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = {str(p.relative_to(root)) for p in (root / "keys").rglob("*.json")}
    files = {str(p.relative_to(root)) for p in (root / "data").rglob("*") if p.is_file()}
    assert keys == {f"keys/{f}.json" for f in files}
    assert list(table_rows(url)) == ["started-0"]  # a task still running is never archived


def test_the_readme_kms_example_runs_as_written(on_localstack: str, tmp_path: Path) -> None:
    from test_encryption import readme_blocks, run_block

    kms, s3 = boto3.client("kms"), s3_client(on_localstack, key="test", secret="test-secret")
    if not [a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == "alias/celery-archive"]:
        kms.create_alias(AliasName="alias/celery-archive", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    if "archive" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="archive", ObjectLockEnabledForBucket=True)
    out = run_block(readme_blocks()[1], tmp_path)
    forgot = next(json.loads(line) for line in out.splitlines() if line.startswith('{"command":"forget"'))
    assert forgot["results"] == 1 and len(forgot["keys_destroyed"]) == 1
    key = forgot["keys_destroyed"][0]
    assert not s3.list_object_versions(Bucket="archive", Prefix=f"prod/{key}").get("Versions")
    locked = s3.list_object_versions(Bucket="archive", Prefix="prod/" + key.removeprefix("keys/").removesuffix(".json"))
    assert locked.get("Versions")  # the old data file: kept by COMPLIANCE, its key gone
