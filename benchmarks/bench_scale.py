"""One run split into shards: `celery-archive run` on 1,000,000 expired PostgreSQL rows in one
piece, with 2 and 4 local shards (--shards N), and with 4 shards on a Celery worker
(--on-celery: a prefork worker, RabbitMQ broker), each on its own copy of one template database
(bench_sql.py's), measured in the same invocation. Prints each time and its speedup against the
1-shard run; exits non-zero if a run did not archive, verify and delete every row.

    .venv/bin/python benchmarks/bench_scale.py [--rows 1000000] [--repeats 1] [--no-worker]

The worker uses the broker at CA_BENCH_AMQP (default amqp://guest:guest@127.0.0.1:5672//) and
a Redis result backend (CA_BENCH_REDIS, default redis://127.0.0.1:6379/13) for the shard tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sql import BIN, drop, make_template, url_for
from common import measure, rotated
from sqldbs import Db

BROKER = os.environ.get("CA_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
RESULTS = os.environ.get("CA_BENCH_REDIS", "redis://127.0.0.1:6379/13")


PG = Db("postgresql")  # clone() and remaining() of a template that make_template() made

def start_worker(root: Path, queue: str, concurrency: int) -> subprocess.Popen[bytes]:
    (root / "scaleproj.py").write_text(f"from celery import Celery\napp = Celery('scaleproj', broker={BROKER!r}, backend={RESULTS!r})\n"
                                       "app.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)\n")
    log = root / "worker.log"
    proc = subprocess.Popen([str(BIN / "celery"), "-A", "scaleproj", "worker", "-Q", queue, "-I", "celery_archive.tasks",
                             "-c", str(concurrency), "--pool", "prefork", "--loglevel", "INFO", "-n", f"{queue}@%h",
                             "--without-mingle", "--without-gossip"], cwd=root, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True)
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-worker", action="store_true", help="Leave out the run on a Celery worker.")
    args = ap.parse_args()
    contenders = {"1 shard": [], "2 local shards": ["--shards", "2"], "4 local shards": ["--shards", "4"]}
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    queue = f"bench_scale_{secrets.token_hex(3)}"
    worker = None
    if not args.no_worker:
        contenders["4 shards, 1 worker (-c 4)"] = ["--shards", "4", "--on-celery", "--queue", queue]
        worker = start_worker(root, queue, 4)
    # a second apart from 70 days back: every row is past 30 days at any size up to 3.4 million
    template = make_template(args.rows, "(now() at time zone 'utc') - interval '70 days' + g * interval '1 second'", "ca_scale")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    try:
        for r in range(args.repeats):
            for label in rotated(list(contenders), r):
                db = PG.clone(template)
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        argv = [str(BIN / "celery-archive"), *(["-A", "scaleproj"] if "--on-celery" in contenders[label] else []),
                                "run", "--source", "db+" + url_for(db), "--sink", f"{tmp}/archive", "--older-than", "30d",
                                "--json", *contenders[label]]
                        old = os.getcwd()
                        os.chdir(root)  # -A scaleproj is found here
                        os.environ["PYTHONPATH"] = str(root)
                        try:
                            s, _, out = measure(argv)
                        finally:
                            os.chdir(old)
                        report = json.loads(out.splitlines()[-1])
                        assert report["archived"] == report["verified"] == report["deleted"] == args.rows, report
                        assert PG.remaining(db) == 0, f"{label} left rows behind"
                    times[label].append(s)
                finally:
                    drop(db)
    finally:
        drop(template)
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["1 shard"]
    print(f"{args.rows:,} expired rows on PostgreSQL, {os.cpu_count()} CPU(s), median of {args.repeats} "
          "(each a fresh `celery-archive run` on a fresh copy):")
    for k, s in med.items():
        print(f"  {k:28s} {s:7.2f} s   {args.rows / s:9,.0f} rows/s   speedup vs 1 shard {base / s:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
