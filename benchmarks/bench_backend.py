"""The archive+ result backend against the plain Redis backend, in the same run: N results
written by Celery's own backend code (100 written, the rest cloned with new ids), archived and
purged by one celery-archive run (Parquet row groups of 10,000) and the index compacted; then

  - live reads: get_task_meta(id, cache=False) of results still in Redis, plain backend and
    archive+ backend interleaved, p50 and mean, ratio archive+ / plain (target <= 1.03);
  - archived reads through archive+ (local sink), after a warm-up of W lookups: p50 and p95
    (target p50 <= 5 ms), the row groups decoded, and the same with a row-group cache too small
    to hold one (every lookup decodes its row group: the bound without the cache);
  - unknown ids: object reads per lookup (target <= 1), miss cache off;
  - archived reads with the archive on S3 (moto's server over HTTP): p50 (target <= 25 ms).

    .venv/bin/python benchmarks/bench_backend.py [--results 100000] [--lookups 2000] [--live 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from common import write_samples

from celery_archive import RunConfig, open_sink, run
from celery_archive.archive_backend.settings import ArchiveSettings
from celery_archive.archive_backend.tier import ArchiveTier
from celery_archive.index.packs import compact
from celery_archive.restore.search import CountingSink

MS = 1000.0
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto server: one line per request otherwise


def redis_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def app_for(url: str, **conf: Any) -> Any:
    app = Celery("bench", backend=url, set_as_current=False)
    app.conf.update(result_extended=True, **conf)
    return app


def fill(app: Any, n: int, prefix: str) -> list[str]:
    """n results: 100 written by Celery, the others their clones under new ids."""
    samples = write_samples(app, min(n, 100))
    client, backend = app.backend.client, app.backend
    metas = [json.loads(client.get(backend.get_key_for_task(t))) for t in samples]
    ids = list(samples)
    pipe = client.pipeline(transaction=False)
    for i in range(len(samples), n):
        meta = dict(metas[i % len(metas)], task_id=f"{prefix}-{i:07d}")
        pipe.set(backend.get_key_for_task(meta["task_id"]), json.dumps(meta))
        ids.append(meta["task_id"])
        if i % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return ids


def timed(fn: Callable[[str], Any], ids: list[str]) -> list[float]:
    out = []
    for tid in ids:
        t0 = time.perf_counter()
        fn(tid)
        out.append((time.perf_counter() - t0) * MS)
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def counted(app: Any, sink_url: str, **settings: Any) -> CountingSink:
    """Put a tier whose object reads are counted behind app's archive+ backend."""
    sink = CountingSink(open_sink(sink_url))
    app.backend.archive = ArchiveTier(ArchiveSettings(sink=sink_url, **settings), sink=sink)
    return sink


def archived_reads(app: Any, ids: list[str], warmup: int, label: str) -> float:
    rows = app.backend.archive.rows
    meta = app.backend.get_task_meta
    t0 = time.perf_counter()
    first = meta(ids[0], cache=False)
    cold = (time.perf_counter() - t0) * MS
    assert first["status"] in ("SUCCESS", "FAILURE"), first
    timed(lambda t: meta(t, cache=False), ids[1:warmup])
    loads_before = rows.loads
    times = timed(lambda t: meta(t, cache=False), ids[warmup:])
    print(f"{label}: first lookup (cold: listing, pack, footer, row group) {cold:.1f} ms; after {warmup} warm-up lookups, "
          f"p50 {statistics.median(times):.2f} ms, p95 {pct(times, 0.95):.2f} ms over {len(times)} ids "
          f"({rows.loads - loads_before} row groups decoded during them)")
    return statistics.median(times)


def s3_copy(local: Path) -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import os

    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    for f in local.rglob("*"):
        if f.is_file() and ".tmp-spool" not in f.parts:
            s3.upload_file(str(f), "bench", f"arch/{f.relative_to(local).as_posix()}")
    yield "s3://bench/arch"
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--live", type=int, default=2000)
    ap.add_argument("--s3-lookups", type=int, default=500)
    args = ap.parse_args()
    rnd = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="ca-bench-backend-") as tmp:
        server, port = redis_server(Path(tmp))
        try:
            url, sink = f"redis://127.0.0.1:{port}/0", Path(tmp) / "archive"
            plain = app_for(url)
            ids = fill(plain, args.results, "old")
            t0 = time.perf_counter()
            report = run(RunConfig(source=url, sink=str(sink), older_than=__import__("datetime").timedelta(0)))
            compact(open_sink(str(sink)), Path(tmp))
            print(f"archived and purged {report.deleted:,} results in {time.perf_counter() - t0:.1f} s; index compacted")
            live = fill(plain, args.live, "live")
            wrapped = app_for("archive+" + url, archive_sink=str(sink))

            # live reads, interleaved so that both see the same server and the same noise
            p_times, a_times = [], []
            for tid in live * 2:
                p_times += timed(lambda t: plain.backend.get_task_meta(t, cache=False), [tid])
                a_times += timed(lambda t: wrapped.backend.get_task_meta(t, cache=False), [tid])
            p50p, p50a = statistics.median(p_times), statistics.median(a_times)
            meanp, meana = statistics.fmean(p_times), statistics.fmean(a_times)
            print(f"live read, plain backend: p50 {p50p:.3f} ms, mean {meanp:.3f} ms")
            print(f"live read, archive+ backend: p50 {p50a:.3f} ms, mean {meana:.3f} ms")
            print(f"ratio archive+ / plain, live read: p50 {p50a / p50p:.3f}x, mean {meana / meanp:.3f}x (target <= 1.03)")

            sample = rnd.sample(ids, min(len(ids), args.lookups + args.warmup))
            p50_local = archived_reads(wrapped, sample, args.warmup, "archived read, local sink")
            small = app_for("archive+" + url, archive_sink=str(sink), archive_cache_size=1)
            counted(small, str(sink), cache_bytes=1)
            uncached = archived_reads(small, sample[: args.warmup // 4 + 100], args.warmup // 4, "archived read, local sink, no row-group cache")
            print(f"ratio archived read / plain live read (p50): {p50_local / p50p:.1f}x; without the row-group cache {uncached / p50p:.1f}x")

            unknown = app_for("archive+" + url, archive_sink=str(sink))
            reads = counted(unknown, str(sink), miss_ttl=0.0)  # every id new: the miss cache never answers
            unknown.backend.get_task_meta("warm-up-unknown", cache=False)
            per_id = []
            for i in range(200):
                before = reads.reads
                assert unknown.backend.get_task_meta(f"never-{i}", cache=False)["status"] == "PENDING"
                per_id.append(reads.reads - before)
            print(f"unknown id: object reads per lookup max {max(per_id)}, mean {statistics.fmean(per_id):.2f} "
                  f"(the pack of its bucket, once; target <= 1), listings {reads.lists}")

            for s3_url in s3_copy(sink):
                remote = app_for("archive+" + url, archive_sink=s3_url)
                archived_reads(remote, sample[: args.s3_lookups + 50], 50, "archived read, S3 emulator (moto server)")
                remote_small = app_for("archive+" + url, archive_sink=s3_url)
                counted(remote_small, s3_url, cache_bytes=1)
                archived_reads(remote_small, sample[: 150], 50, "archived read, S3 emulator, no row-group cache")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
