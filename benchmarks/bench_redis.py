"""A full `celery-archive run` on a Redis result backend holding 100,000 expired results,
against the seed-style loop (KEYS, then TTL and GET per key, a JSON line each, DEL per key),
on identical data re-created before each contender, in the same run.

Uses Redis database 12 on CA_BENCH_REDIS (default redis://127.0.0.1:6379/12), which it
flushes. Targets (issue 3): >= 10x faster than seed-style, >= 50,000 results/s end to end (issue 20: >= 75,000, peak RSS <= 200 MiB),
peak RSS <= 300 MiB.

    .venv/bin/python benchmarks/bench_redis.py [--results 100000] [--repeats 3]
    .venv/bin/python benchmarks/bench_redis.py --memory 100000 1000000 [--repeats 1] [--baseline-bin PATH]

--memory (issue 20): peak RSS of runs at each size, the largest against the smallest; the keys
are written by a script on the server. Target: 1,000,000 within 1.3x of 100,000, under 300 MiB.
--growth is the same runs, for their per-result time (whole process, start-up included): target
1,000,000 within 1.15x of 100,000.

    .venv/bin/python benchmarks/bench_redis.py --growth 100000 1000000 [--repeats 3]
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
from common import measure, rotated, write_samples

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


_FILL = """
local ttl, first, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local samples = {}
for j = 4, #ARGV, 2 do
  samples[#samples + 1] = {string.gsub(ARGV[j], "%p", "%%%0"), ARGV[j + 1]}
end
for i = first, first + n - 1 do
  local tid = string.format("%08x-%04x-4%03x-a%03x-%012x", i, math.random(0, 65535), math.random(0, 4095),
                            math.random(0, 4095), i * 7919 % 1000000007)
  local sample = samples[i % #samples + 1]
  redis.call("SETEX", "celery-task-meta-" .. tid, ttl, (string.gsub(sample[2], sample[1], tid)))
end
return n
"""


def populate_fast(sample: list[tuple[str, bytes]], n: int) -> None:
    """As populate (the samples in turn, fresh uuid-shaped ids, TTL one day), written by a
    script on the server: 1,000,000 keys in seconds, not a minute."""
    client = redis.from_url(URL)
    client.flushdb()
    fill = client.register_script(_FILL)
    flat = [x for sid, value in sample for x in (sid, value)]
    chunk = 20_000
    for first in range(0, n, chunk):
        fill(args=[86400, first, min(chunk, n - first), *flat])
    client.close()


def memory(sample: list[tuple[str, bytes]], sizes: list[int], repeats: int, exe: Path) -> None:
    """Peak RSS of whole runs at each size (the largest against the smallest), same data shape."""
    peaks: dict[int, list[float]] = {n: [] for n in sizes}
    secs: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(repeats):
        for n in (sizes if r % 2 == 0 else sizes[::-1]):
            populate_fast(sample, n)
            time.sleep(1.1)
            with tempfile.TemporaryDirectory() as tmp:
                s, rss, out = measure([str(exe), "run", "--source", URL, "--sink", f"{tmp}/archive", "--older-than", "1s", "--json"])
            report = json.loads(out)
            assert report["archived"] == report["verified"] == report["deleted"] == n, report
            peaks[n].append(rss)
            secs[n].append(s)
    redis.from_url(URL).flushdb()
    print(f"peak RSS of `celery-archive run` by number of expired results (max of {repeats}; time: median):")
    for n in sizes:
        print(f"  {n:>10,} results   peak RSS {max(peaks[n]):6.1f} MiB   {statistics.median(secs[n]):6.2f} s "
              f"({n / statistics.median(secs[n]):,.0f} results/s)")
    small, big = sizes[0], sizes[-1]
    print(f"ratio peak RSS {big:,} / {small:,} = {max(peaks[big]) / max(peaks[small]):.2f}x   (target <= 1.3x, and under 300 MiB)")
    per = {n: statistics.median(secs[n]) / n * 1e6 for n in sizes}
    print(f"per-result time: {', '.join(f'{n:,} results {per[n]:.2f} us' for n in sizes)}; "
          f"per round: {[(n, [round(x, 2) for x in secs[n]]) for n in sizes]}")
    print(f"ratio per-result time {big:,} / {small:,} = {per[big] / per[small]:.3f}x   (target <= 1.15x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-bin", type=Path, default=None, metavar="PATH",
                    help="Another checkout's celery-archive executable, run in the same rounds (an A/B of two versions).")
    ap.add_argument("--memory", type=int, nargs="+", default=None, metavar="N",
                    help="Only the peak RSS of runs on each of these numbers of results (e.g. 100000 1000000).")
    ap.add_argument("--growth", type=int, nargs="+", default=None, metavar="N",
                    help="The same as --memory, read for the per-result time of each size.")
    args = ap.parse_args()
    sample = samples()
    if args.memory or args.growth:
        memory(sample, sorted(args.memory or args.growth), args.repeats, args.baseline_bin or BIN / "celery-archive")
        return
    results: dict[str, list[tuple[float, float]]] = {"celery-archive run": [], "seed-style": []}
    if args.baseline_bin:
        results["baseline run"] = []
    for r in range(args.repeats):
        for label in rotated(list(results), r):
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
    print(f"run throughput           = {args.results / ours:,.0f} results/s (issue 20: target >= 75,000; issue 3: >= 50,000)")
    print(f"peak RSS of run          = {med['celery-archive run'][1]:.1f} MiB (issue 20: target <= 200 MiB)")
    if args.baseline_bin:
        base = med["baseline run"][0]
        print(f"ratio run / baseline run = {ours / base:.3f}x   (A/B: {args.baseline_bin}; below 1 is faster)")
        print(f"per round (run, baseline): {[(round(a[0], 3), round(b[0], 3)) for a, b in zip(results['celery-archive run'], results['baseline run'])]}")


if __name__ == "__main__":
    main()
