"""forget on an encrypted archive under S3 Object Lock COMPLIANCE (moto's server): the file that
held the result is rewritten under a new data key, the old file's key is destroyed; the locked old
version stays, and nothing the archive holds decrypts it any more (crypto-shredding)."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli, new_bucket, s3_client
from forget_support import archived_ids, make_archive, marker, restored
from test_encryption import master_key

from celery_archive.archive import audit
from celery_archive.crypto import Cipher
from celery_archive.errors import KeyMaterialError
from celery_archive.formats.jsonl import decrypted
from celery_archive.index.packs import lookup
from celery_archive.sinks import open_sink


def opened(data: bytes, file: str, cipher: Cipher) -> int:
    """Rows of the stored bytes ``data`` of ``file``, decrypted with ``cipher`` (raises if it cannot)."""
    if file.endswith(".parquet"):
        return int(pq.ParquetFile(pa.BufferReader(data), decryption_properties=cipher.parquet_read()).read().num_rows)
    return len(decrypted(io.BytesIO(data), file, cipher).splitlines())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_forget_shreds_a_compliance_locked_file(sqlite_url: str, s3_endpoint: str, tmp_path: Path, fmt: str) -> None:
    s3 = s3_client(s3_endpoint)
    bucket = new_bucket(s3, lock=True)
    sink = f"s3://{bucket}/enc?object_lock=COMPLIANCE&retain=1d&encrypt=keyfile:{master_key(tmp_path)}"
    ids = make_archive(sqlite_url, sink, fmt, again=())
    s = open_sink(sink)
    holder = lookup(s, ["r-033"])["r-033"][0]["key"]
    assert s.retention(holder) is not None  # COMPLIANCE: the file itself cannot go
    destroyed = s.encryption.cipher(s, holder)  # type: ignore[union-attr]  # kept by the test only

    proc = cli("forget", "r-033", "--sink", sink, "--reason", "erasure 118", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = json.loads(proc.stdout)
    assert out["keys_destroyed"] == [f"keys/{holder}.json"] and out["files_rewritten"] == 1
    event = [e for e in audit.events(s) if e["event"] == "forget"][-1]
    assert event["keys_destroyed"] == [f"keys/{holder}.json"] and event["reason"] == "erasure 118"

    versions = s3.list_object_versions(Bucket=bucket, Prefix="enc/").get("Versions", [])
    old = [v for v in versions if v["Key"] == f"enc/{holder}"]
    assert len(old) == 1  # Object Lock keeps the old version (it must) ...
    locked = s3.get_object(Bucket=bucket, Key=old[0]["Key"], VersionId=old[0]["VersionId"])["Body"].read()
    assert not [v for v in versions if v["Key"] == f"enc/keys/{holder}.json"]  # ... but its key is gone, every version
    with pytest.raises(KeyMaterialError, match="destroyed"):
        s.encryption.cipher(s, holder)  # type: ignore[union-attr]

    # nothing the archive holds opens it: every stored version of every key object, each unwrapped
    # by the master key as the file it names, tried on the old file (as that file and as its own)
    master = s.encryption.master  # type: ignore[union-attr]
    tried = 0
    for v in versions:
        if not v["Key"].startswith("enc/keys/"):
            continue
        body = orjson.loads(s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read())
        secret = master.unwrap(base64.b64decode(body["wrapped"]), body["file"])
        for as_file in (holder, body["file"]):
            with pytest.raises(KeyMaterialError, match="does not decrypt with its data key"):
                opened(locked, holder, Cipher(as_file, f"keys/{holder}.json", secret))
            tried += 1
    assert tried >= 4
    assert opened(locked, holder, destroyed) > 0  # the control: with the key forget destroyed, it would open

    proc = cli("restore", "r-033", "--sink", sink)
    assert proc.returncode == 5 and "not in the archive" in proc.stderr, proc.stderr
    kept = [t for t in ids if t != "r-033"]
    assert Counter(restored(sink, kept)) == Counter(kept)  # the rewritten file opens with its new key
    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout
    assert marker("r-033").encode() not in locked and b"r-034" not in locked  # and it never held them in clear
    assert Counter(archived_ids(sink)) == Counter(kept)
