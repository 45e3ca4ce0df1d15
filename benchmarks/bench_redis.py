"""A full `celery-archive run` on a Redis result backend holding 100,000 expired results,
against the seed-style loop (KEYS, then TTL and GET per key, a JSON line each, DEL per key),
on identical data re-created before each contender, in the same run.

Uses Redis database 12 on CA_BENCH_REDIS (default redis://127.0.0.1:6379/12), which it
flushes. Targets (issue 3): >= 10x faster than seed-style, >= 50,000 results/s end to end,
peak RSS <= 300 MiB.

    .venv/bin/python benchmarks/bench_redis.py [--results 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis
from common import measure, write_samples

URL = os.environ.get("CA_BENCH_REDIS", "redis://127.0.0.1:6379/12")
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def samples() -> list[tuple[str, bytes]]:
    """100 results as Celery's own RedisBackend stores them (json, result_extended)."""
    from celery import Celery

    client = redis.from_url(URL)
    client.flushdb()
    app = Celery("bench", backend=URL, set_as_current=False)
    app.conf.result_extended = True
    write_samples(app)
    out = [(f"sample-{i:03d}", client.get(f"celery-task-meta-sample-{i:03d}") or b"") for i in range(100)]
    client.close()
    return out


def populate(sample: list[tuple[str, bytes]], n: int) -> None:
    """n results cloned from the samples with fresh task ids, TTL one day, as Celery sets it."""
    import uuid

    client = redis.from_url(URL)
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        sid, value = sample[i % len(sample)]
        tid = str(uuid.uuid4())
        pipe.setex(f"celery-task-meta-{tid}", 86400, value.replace(sid.encode(), tid.encode()))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-bin", type=Path, default=None, metavar="PATH",
                    help="Another checkout's celery-archive executable, run in the same rounds (an A/B of two versions).")
    args = ap.parse_args()
    sample = samples()
    results: dict[str, list[tuple[float, float]]] = {"celery-archive run": [], "seed-style": []}
    if args.baseline_bin:
        results["baseline run"] = []
    for _ in range(args.repeats):
        for label in results:
            populate(sample, args.results)
            time.sleep(1.1)  # every result is now older than --older-than 1s
            with tempfile.TemporaryDirectory() as tmp:
                if label == "seed-style":
                    s, rss, out = measure([sys.executable, str(HERE / "seed_redis.py"), URL, f"{tmp}/a.jsonl"])
                    assert int(out) == args.results, out
                else:
                    exe = BIN / "celery-archive" if label == "celery-archive run" else args.baseline_bin
                    s, rss, out = measure([str(exe), "run", "--source", URL, "--sink", f"{tmp}/archive",
                                           "--older-than", "1s", "--json"])
                    report = json.loads(out)
                    assert report["archived"] == report["verified"] == report["deleted"] == args.results, report
            assert redis.from_url(URL).dbsize() == 0, f"{label} left keys behind"
            results[label].append((s, rss))
    redis.from_url(URL).flushdb()
    med = {k: (statistics.median(s for s, _ in v), max(r for _, r in v)) for k, v in results.items()}
    print(f"{args.results:,} expired results in Redis, median of {args.repeats} (identical data for each):")
    for k, (s, r) in med.items():
        print(f"  {k:20s} {s:6.2f} s   {args.results / s:9,.0f} results/s   peak RSS {r:6.1f} MiB")
    ours, seed = med["celery-archive run"][0], med["seed-style"][0]
    print(f"ratio seed-style / run   = {seed / ours:.1f}x   (target >= 10x)")
    print(f"run throughput           = {args.results / ours:,.0f} results/s (target >= 50,000)")
    print(f"peak RSS of run          = {med['celery-archive run'][1]:.1f} MiB (target <= 300 MiB)")
    if args.baseline_bin:
        base = med["baseline run"][0]
        print(f"ratio run / baseline run = {ours / base:.3f}x   (A/B: {args.baseline_bin}; below 1 is faster)")
        print(f"per round (run, baseline): {[(round(a[0], 3), round(b[0], 3)) for a, b in zip(results['celery-archive run'], results['baseline run'])]}")


if __name__ == "__main__":
    main()
