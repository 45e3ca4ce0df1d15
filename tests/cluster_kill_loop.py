"""A field test of the Redis Cluster source: kill -9 at random points of real `celery-archive run`
processes on a 3-primary cluster while slots move between the primaries all along (redis-cli
--cluster reshard, 300 slots at a time), then a run with the slots at rest; counts what was lost
and what was archived twice (kill_loop.py's loop).

    .venv/bin/python tests/cluster_kill_loop.py 15          (rounds; KILL_LOOP_RESULTS a round, default 1000)

Results are Celery's own meta and encoding (RedisBackend._get_result_meta, .encode), dated 40
days back, written through redis-py's RedisCluster. A killed run's archiver lock (a key with a
60 s TTL) is removed after each kill, so that the next round need not wait for it to expire. The
ids the cluster holds are counted with no migration under way (a key being migrated is briefly
on neither node's SCAN)."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import redis_app, redis_cluster_started
from kill_loop import EXE, committed_ids, loop

from celery_archive.sinks import open_sink


def main() -> None:
    import redis
    from redis.cluster import RedisCluster

    rounds, n = int(sys.argv[1]), int(os.environ.get("KILL_LOOP_RESULTS", "1000"))
    tmp = Path(tempfile.mkdtemp(prefix="cluster-kill-loop-"))
    with redis_cluster_started(tmp) as ports:
        url = f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/0"
        rc = RedisCluster(host="127.0.0.1", port=ports[0])
        backend = redis_app("").backend
        dated = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).isoformat()
        ids = {p: redis.Redis(port=p).execute_command("CLUSTER", "MYID").decode() for p in ports}
        quiet = threading.Lock()  # held while slots move

        def add(_url: str, start: int, count: int) -> set[str]:
            out = {f"k{i:06d}" for i in range(start, start + count)}
            pipe = rc.pipeline()
            for tid in sorted(out):
                meta = {**backend._get_result_meta({"i": tid, "pad": "x" * 100}, "SUCCESS", None, None), "task_id": tid, "date_done": dated}
                pipe.set(f"celery-task-meta-{tid}", backend.encode(meta), ex=86400)
            pipe.execute()
            return out

        def held(_url: str) -> set[str]:
            with quiet:
                out: set[str] = set()
                for node in rc.get_primaries():
                    conn = rc.get_redis_connection(node)
                    for key in conn.scan_iter(match="celery-archive:*"):  # the killed run's archiver lock
                        conn.delete(key)
                    out |= {k.decode().rsplit("-meta-", 1)[1] for k in conn.scan_iter(match="celery-task-meta-k*")}
                return out

        stop, moves = threading.Event(), [0]

        def reshard() -> None:
            rng = random.Random(1)
            while not stop.is_set():
                a, b = rng.sample(sorted(ids), 2)
                with quiet:
                    done = subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{ports[0]}", "--cluster-from", ids[a],
                                           "--cluster-to", ids[b], "--cluster-slots", "300", "--cluster-yes"], capture_output=True)
                moves[0] += done.returncode == 0
                stop.wait(0.01)

        mover = threading.Thread(target=reshard, daemon=True)
        mover.start()
        old: set[str] = set()
        sink = str(tmp / "archive")
        try:
            out = loop(url, sink, old, rounds, per_round=n, add=add, held=held)
        finally:
            stop.set()
            mover.join()
        subprocess.run([EXE, "run", "--source", url, "--sink", sink, "--older-than", "30d", "--json"], check=True, capture_output=True)
        counts = Counter(i for i in committed_ids(open_sink(sink)) if i in old)
        source = held(url)
        print(f"redis-cluster: {out.rounds} rounds ({out.killed} killed while running), {n} new results a round, {moves[0]} reshards "
              f"of 300 slots meanwhile: lost {out.lost}, duplicated {out.duplicated}, left by the last run while slots moved "
              f"{out.left_in_source}; after a run with the slots at rest: lost {len(old - set(counts) - source)}, duplicated "
              f"{sum(c - 1 for c in counts.values() if c > 1)}, left {len(old & source)} of {len(old)}; seed {out.seed}")
        rc.close()


if __name__ == "__main__":
    main()
