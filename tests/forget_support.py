"""Archives for the forget and prune tests: results stored by Celery's own database backend,
archived by real runs into several small files and two runs (one id archived in both)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from conftest import age_rows, celery_app, cli
from helpers import archive

from celery_archive.archive import manifest as mf
from celery_archive.sinks import open_sink

N = 40


def marker(tid: str) -> str:
    return f"PAYLOAD-{tid}-MARK"


def make_archive(url: str, sink: str, fmt: str = "parquet", n: int = N, again: tuple[str, ...] = ("r-005",),
                 days: int = 40) -> list[str]:
    """``n`` results r-000... archived in one run, then ``again`` stored anew and archived by a
    second run; returns every id."""
    app = celery_app(url)
    ids = [f"r-{i:03d}" for i in range(n)]
    for i, tid in enumerate(ids):
        app.backend.store_result(tid, {"n": i, "secret": marker(tid)}, "SUCCESS")
    age_rows(url, days)
    kw: dict[str, Any] = {"format": "jsonl", "compression": "none"} if fmt == "jsonl" else {"format": fmt}
    archive(url, sink, max_file_bytes=2048, batch_size=8, **kw)  # type: ignore[arg-type]  # a path or an s3:// URL
    for tid in again:
        app.backend.store_result(tid, {"n": -1, "secret": marker(tid)}, "SUCCESS")
    if again:
        age_rows(url, days, "task_id IN (" + ", ".join(f"'{t}'" for t in again) + ")")
        archive(url, sink, max_file_bytes=2048, batch_size=8, **kw)  # type: ignore[arg-type]  # a path or an s3:// URL
    return ids


def archived_ids(sink: str) -> list[str]:
    """Task ids in the files the manifests name, with repeats (what a query sees)."""
    from celery_archive.crypto import cipher_of
    from celery_archive.formats import read_tables

    s = open_sink(sink)
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ca-forget-count-") as tmp:
        path = Path(tmp) / "file"
        for e in mf.committed_files(s):
            with s.open(e.key) as f:
                path.write_bytes(f.read())
            out += [t for tb in read_tables(path, e.format, e.compression, ["task_id"], cipher=cipher_of(s, e)) for t in tb.column("task_id").to_pylist()]
    return out


def query_count(sink: str, tid: str) -> int:
    proc = cli("query", "--sink", sink, f"select count(*) as n from results where task_id = '{tid}'", "--json")
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout.splitlines()[0])["n"])


def restored(sink: str, ids: list[str]) -> list[str]:
    """The ids ``restore --json`` prints (one line a result)."""
    proc = cli("restore", *ids, "--sink", sink, "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return [json.loads(line)["task_id"] for line in proc.stdout.splitlines()]


def local_bytes(root: Path) -> list[tuple[str, bytes]]:
    """Every file under the archive directory (spool and temp files included)."""
    return [(str(p), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def s3_bytes(client: Any, bucket: str) -> list[tuple[str, bytes]]:
    """Every stored version of every object in the bucket (a plain delete keeps them)."""
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            out.append((f"{v['Key']}@{v['VersionId']}", body))
    return out


def holders(blobs: list[tuple[str, bytes]], needle: str) -> list[str]:
    return [name for name, data in blobs if needle.encode() in data]
