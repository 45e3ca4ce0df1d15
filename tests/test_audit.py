"""The audit log (archive/audit.py): create-only events in time order, on a local sink and on S3
(moto's server), locked like manifests where the sink asks for Object Lock."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from celery_archive.archive import audit
from celery_archive.errors import ConfigError, DamagedObjectError
from celery_archive.sinks import Sink, open_sink
from celery_archive.version import __version__


@pytest.fixture(params=["local", "s3"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Sink:
    if request.param == "s3":
        return open_sink(f"s3://{request.getfixturevalue('s3_bucket')}/prod")
    return open_sink(str(tmp_path / "archive"))


def test_events_come_back_in_time_order_with_who_when_and_version(sink: Sink) -> None:
    audit.record(sink, "run", run_id="r1", manifest_sha256="ab" * 32, archived=3)
    audit.record(sink, "purge", run_id="r1", deleted=3)
    audit.record(sink, "verify", ok=True, files=1)
    got = list(audit.events(sink))
    assert [e["event"] for e in got] == ["run", "purge", "verify"]
    first = got[0]
    assert first["run_id"] == "r1" and first["archived"] == 3 and first["manifest_sha256"] == "ab" * 32
    assert first["pid"] == os.getpid() and first["version"] == __version__ and "@" in first["who"]
    times = [dt.datetime.fromisoformat(e["time"]) for e in got]
    assert times == sorted(times) and all(t.tzinfo is not None and t.utcoffset() == dt.timedelta(0) for t in times)
    keys = [o.key for o in sink.list("audit/")]
    assert len(keys) == 3 and all(k.startswith("audit/") and k.endswith(".json") for k in keys)


def test_an_event_is_never_overwritten_and_the_log_only_grows(sink: Sink) -> None:
    for i in range(20):  # many within one microsecond's reach: each gets its own object
        audit.record(sink, "verify", ok=True, n=i)
    assert [e["n"] for e in audit.events(sink)] == list(range(20))
    assert len(list(sink.list("audit/"))) == 20


def test_unknown_events_reserved_fields_and_non_json_values_are_refused(sink: Sink) -> None:
    with pytest.raises(ConfigError, match="not one of"):
        audit.record(sink, "erase")
    with pytest.raises(ConfigError, match="set by the audit log"):
        audit.record(sink, "run", who="someone else")
    with pytest.raises(ConfigError, match="not a JSON value"):
        audit.record(sink, "run", when=object())
    assert list(sink.list("audit/")) == []


def test_a_damaged_event_is_named(tmp_path: Path) -> None:
    sink = open_sink(str(tmp_path / "a"))
    audit.record(sink, "run", run_id="r")
    sink.put_bytes("audit/29991231T000000.000000Z-00000000.json", b"not json")
    with pytest.raises(DamagedObjectError, match="audit log is damaged"):
        list(audit.events(sink))


def test_events_are_locked_where_the_sink_asks_for_object_lock(s3_endpoint: str) -> None:
    import secrets

    import boto3

    s3 = boto3.client("s3")
    bucket = f"ca-lock-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    sink = open_sink(f"s3://{bucket}/p?object_lock=GOVERNANCE&retain=30d")
    audit.record(sink, "forget", reason="erasure request 1", results=2)
    (obj,) = s3.list_objects_v2(Bucket=bucket, Prefix="p/audit/")["Contents"]
    head = s3.head_object(Bucket=bucket, Key=obj["Key"])
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29)
    assert [e["reason"] for e in audit.events(sink)] == ["erasure request 1"]


def test_events_are_retained_by_a_bucket_default_object_lock(s3_endpoint: str) -> None:
    """A bucket whose Object Lock has a default retention locks every event the store receives,
    with no sink option; create-only puts are what such a bucket takes."""
    import secrets

    import boto3

    s3 = boto3.client("s3")
    bucket = f"ca-default-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    sink = open_sink(f"s3://{bucket}/p")
    audit.record(sink, "verify", ok=True)
    (obj,) = s3.list_objects_v2(Bucket=bucket, Prefix="p/audit/")["Contents"]
    head = s3.head_object(Bucket=bucket, Key=obj["Key"])
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.timezone.utc)
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match=r"AccessDenied|locked|retention|WORM"):
        s3.delete_object(Bucket=bucket, Key=obj["Key"], VersionId=head["VersionId"])
