"""A full `celery-archive run` on a 3-primary Redis Cluster against the same run on one Redis
server, on identical data (bench_redis.py's samples, cloned with fresh ids, TTL one day)
re-created before each contender, in the same run. No target: the ratio says what SCAN per
primary and one script call per key (a call is confined to one slot) cost on this machine,
where the three primaries share its cores.

The cluster is started for the benchmark (tests/helpers.redis_cluster_started); the single
server is bench_redis.py's (CA_BENCH_REDIS, database 12, flushed).

    .venv/bin/python benchmarks/bench_cluster.py [--results 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from bench_redis import BIN, URL, populate, samples
from common import measure, rotated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def populate_cluster(client: Any, sample: list[tuple[str, bytes]], n: int) -> None:
    """As bench_redis.populate, on the cluster (redis-py's cluster pipeline routes each key)."""
    for node in client.get_primaries():
        client.get_redis_connection(node).flushdb()
    pipe = client.pipeline()
    for i in range(n):
        sid, value = sample[i % len(sample)]
        tid = str(uuid.uuid4())
        pipe.set(f"celery-task-meta-{tid}", value.replace(sid.encode(), tid.encode()), ex=86400)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def main() -> None:
    from helpers import redis_cluster_started
    from redis.cluster import RedisCluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sample = samples()
    with tempfile.TemporaryDirectory() as where, redis_cluster_started(Path(where)) as ports:
        cluster_url = f"redis+cluster://127.0.0.1:{ports[0]}/0"
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        results: dict[str, list[float]] = {"one server": [], "cluster (3 primaries)": []}
        for r in range(args.repeats):
            for label in rotated(list(results), r):
                one = label == "one server"
                if one:
                    populate(sample, args.results)
                else:
                    populate_cluster(client, sample, args.results)
                time.sleep(1.1)  # every result is now older than --older-than 1s
                with tempfile.TemporaryDirectory() as tmp:
                    s, _rss, out = measure([str(BIN / "celery-archive"), "run", "--source", URL if one else cluster_url,
                                            "--sink", f"{tmp}/archive", "--older-than", "1s", "--json"])
                report = json.loads(out)
                assert report["archived"] == report["verified"] == report["deleted"] == args.results, report
                results[label].append(s)
        client.close()
    redis.from_url(URL).flushdb()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{args.results:,} expired results, median of {args.repeats} (identical data for each):")
    for k, s in med.items():
        print(f"  {k:22s} {s:6.2f} s   {args.results / s:9,.0f} results/s")
    print(f"ratio cluster / one server = {med['cluster (3 primaries)'] / med['one server']:.2f}x   (above 1 is slower)")


if __name__ == "__main__":
    main()
