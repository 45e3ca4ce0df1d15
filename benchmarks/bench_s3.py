"""Archiving to S3 against raw boto3 uploads of the same bytes to the same endpoint, measured in
the same run (issue 4: the archive's upload rate at least 80% of the raw rate).

Setup: a PostgreSQL database of expired results (cloned from 100 written by Celery), an S3
server in its own process: moto's server always, LocalStack's runtime too when it is installed
(localstack/install.sh). For each repeat:

1. ``celery-archive run --no-delete`` to ``s3://bench/run-N`` and to a local directory (fresh
   processes): the whole job, and what S3 adds to it.
2. The objects that run wrote are fetched to local files (not timed), then uploaded again:
   * raw: boto3's ``upload_file`` (its transfer manager, defaults: multipart, 10 threads);
   * archive: ``S3Sink.put`` (what a run does: If-None-Match, SHA-256 checksum).
3. One incompressible file of --big-mib MiB (multipart), uploaded the same two ways.

Prints medians, MiB/s and the ratio archive rate / raw rate.

    .venv/bin/python benchmarks/bench_s3.py [--rows 200000] [--repeats 3] [--max-file-size 128MiB] [--big-mib 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_sql import BIN, drop, make_template, url_for
from common import measure

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[str, subprocess.Popen[bytes]]:
    port = _port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"http://127.0.0.1:{port}", proc


def start_localstack(data: Path) -> str | None:
    if not (ROOT / "localstack/.venv/bin/python").exists():
        return None
    out = subprocess.run(["bash", str(ROOT / "localstack/start.sh"), str(_port()), str(data)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"LocalStack did not start: {out.stderr}")
    return out.stdout.strip()


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def wait_bucket(s3: Any) -> None:
    for _ in range(100):
        try:
            s3.create_bucket(Bucket="bench")
            return
        except s3.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    raise SystemExit("the S3 server did not answer")


def fetch(s3: Any, prefix: str, dest: Path) -> list[tuple[str, Path]]:
    """The run's objects as local files: (key relative to the prefix, path)."""
    files = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1:]
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file("bench", obj["Key"], str(path))
            files.append((rel, path))
    return files


def upload_raw(s3: Any, files: list[tuple[str, Path]], prefix: str) -> float:
    t0 = time.perf_counter()
    for rel, path in files:
        s3.upload_file(str(path), "bench", f"{prefix}/{rel}")
    return time.perf_counter() - t0


def upload_sink(files: list[tuple[str, Path]], prefix: str) -> float:
    from celery_archive.formats.writer import file_sha256
    from celery_archive.sinks import open_sink

    sink = open_sink(f"s3://bench/{prefix}")
    t0 = time.perf_counter()
    for rel, path in files:
        # the digest is taken while the file is written in a run; here it is part of the cost
        sink.put(rel, path, file_sha256(path) if rel.startswith("data/") else None)
    return time.perf_counter() - t0


def race(s3: Any, files: list[tuple[str, Path]], tag: str, i: int) -> dict[str, float]:
    """Both contenders upload ``files``; which goes first alternates with ``i``, so neither
    always meets a warmer server."""
    names = ["raw upload_file", "archive S3Sink.put"]
    return {name: upload_raw(s3, files, f"{tag}raw-{i}") if name.startswith("raw") else upload_sink(files, f"{tag}sink-{i}")
            for name in (names if i % 2 == 0 else names[::-1])}


def bench_endpoint(label: str, endpoint: str, source: str, args: argparse.Namespace) -> None:
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    s3 = client(endpoint)
    wait_bucket(s3)
    runs: dict[str, list[float]] = {"run to S3": [], "run to local dir": [], "raw upload_file": [], "archive S3Sink.put": []}
    size = 0
    for i in range(args.repeats):
        common = ["run", "--source", source, "--older-than", "30d", "--no-delete", "--max-file-size", args.max_file_size, "--json"]
        s, _, _ = measure([str(BIN / "celery-archive"), *common, "--sink", f"s3://bench/run-{i}"])
        runs["run to S3"].append(s)
        with tempfile.TemporaryDirectory() as tmp:
            s, _, _ = measure([str(BIN / "celery-archive"), *common, "--sink", f"{tmp}/archive"])
            runs["run to local dir"].append(s)
            files = fetch(s3, f"run-{i}", Path(tmp) / "objects")
            size = sum(p.stat().st_size for _, p in files)
            for name, seconds in race(s3, files, "", i).items():
                runs[name].append(seconds)
    med = {k: statistics.median(v) for k, v in runs.items()}
    mib = size / 2**20
    print(f"\n{label}: {len(files)} objects, {mib:.1f} MiB per run, median of {args.repeats}")
    for k, v in med.items():
        rate = f", {mib / v:.0f} MiB/s" if k in ("raw upload_file", "archive S3Sink.put") else ""
        print(f"  {k:<22} {v:6.2f} s{rate}")
    ratio = med["raw upload_file"] / med["archive S3Sink.put"]
    print(f"  archive upload rate / raw boto3 rate: {ratio:.2f} (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
    extra = med["run to S3"] - med["run to local dir"]
    print(f"  what S3 adds to a whole run (upload + read-back for verify): {extra:.2f} s "
          f"= {extra / med['raw upload_file']:.1f}x one raw upload of the same bytes")
    big_file(s3, args)


def big_file(s3: Any, args: argparse.Namespace) -> None:
    """One data file above the multipart threshold (incompressible, as Parquet is), uploaded
    alternately by each contender and deleted after each round, so the server's memory stays flat."""
    mib = args.big_mib
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        files = [("data/date=2026-01-01/big.parquet", path)]
        times: dict[str, list[float]] = {"raw upload_file": [], "archive S3Sink.put": []}
        for i in range(max(args.repeats, 4)):
            for name, seconds in race(s3, files, "big", i).items():
                times[name].append(seconds)
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="big"):
                    for obj in page.get("Contents", []):
                        s3.delete_object(Bucket="bench", Key=obj["Key"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  one {mib} MiB data file (multipart), median of {len(times['raw upload_file'])}:")
    for k, v in med.items():
        print(f"    {k:<20} {v:6.2f} s, {mib / v:.0f} MiB/s")
    ratio = med["raw upload_file"] / med["archive S3Sink.put"]
    print(f"    archive upload rate / raw boto3 rate: {ratio:.2f} (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-file-size", default="128MiB")
    ap.add_argument("--big-mib", type=int, default=200, help="size of the single multipart file")
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1")
    template = make_template(args.rows)
    source = "db+" + url_for(template)
    try:
        endpoint, moto = start_moto()
        try:
            bench_endpoint("moto server (own process)", endpoint, source, args)
        finally:
            moto.terminate()
            moto.wait()
        with tempfile.TemporaryDirectory() as data:
            ls = start_localstack(Path(data))
            if ls is None:
                print("\nLocalStack: not installed (bash localstack/install.sh), skipped")
            else:
                try:
                    bench_endpoint("LocalStack runtime (own process)", ls, source, args)
                finally:
                    subprocess.run(["bash", str(ROOT / "localstack/stop.sh"), data], check=True)
    finally:
        drop(template)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
