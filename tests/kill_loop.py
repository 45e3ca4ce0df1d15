"""kill -9 at random points of real `celery-archive run` processes, again and again, then one
run to the end; counts what was lost and what was archived twice. Used by test_kill_loop.py,
and as a field test with more rounds:

    .venv/bin/python tests/kill_loop.py sqlite 100
    .venv/bin/python tests/kill_loop.py postgresql 50      (also mysql, s3: an S3 archive on moto)
    .venv/bin/python tests/kill_loop.py postgresql 50 --commit-every 120    (more options for every run)
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_lease_processes import EXE, committed_ids

from celery_archive.sinks import open_sink


@dataclass
class Outcome:
    rounds: int
    killed: int  # rounds whose process was still running when killed
    lost: int  # results in neither the backend nor a committed archive file, at any check
    duplicated: int  # results in committed archive files more than once, at the end
    left_in_source: int  # old results still in the backend at the end
    seed: int


def in_source(url: str) -> set[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.connect() as conn:
        ids = {r[0] for r in conn.exec_driver_sql("SELECT task_id FROM celery_taskmeta")}
    engine.dispose()
    return ids


def add_results(url: str, start: int, n: int) -> set[str]:
    """``n`` more expired results written by Celery's own backend: each round has work to be killed in."""
    from conftest import age_rows, celery_app, pooled

    app = celery_app(url)
    ids = {f"k{i:06d}" for i in range(start, start + n)}
    with pooled(app) as backend:
        for tid in sorted(ids):
            backend.store_result(tid, {"i": tid, "pad": "x" * 100}, "SUCCESS")
    age_rows(url, 40, f"task_id >= 'k{start:06d}'")
    return ids


def loop(url: str, sink: str, old: set[str], rounds: int, seed: int | None = None, env: dict[str, str] | None = None,
         per_round: int = 0, extra: tuple[str, ...] = (), add: Callable[[str, int, int], set[str]] | None = None,
         held: Callable[[str], set[str]] | None = None) -> Outcome:
    """``rounds`` runs, each killed (SIGKILL, the run and its shard processes) at a random
    moment; with ``per_round``, that many more results are written before each round. ``old``
    grows with them. ``extra``: more options for every run (``--shards 4``). ``add`` and ``held``
    write results and list the ids the backend holds (default: a SQL backend's)."""
    add_results, in_source = add or globals()["add_results"], held or globals()["in_source"]
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    next_id = len(old)
    archive = open_sink(sink)
    args = [EXE, "run", "--source", url, "--sink", sink, "--older-than", "30d", "--batch-size", "40",
            "--max-file-size", "8KiB", "--lease-ttl", "1s", "--json", *extra]
    lost: set[str] = set()
    killed = 0
    if per_round:  # one round run to its end: how long a run takes here, so the kills land inside runs
        old |= add_results(url, next_id, per_round)
        next_id += per_round
        began = time.monotonic()
        subprocess.run(args, capture_output=True, env={**os.environ, **(env or {})}, timeout=300, check=True)
        span = time.monotonic() - began
    else:
        span = 3.0
    watch = 0.0  # after a kill the next run first watches the dead run's lease (ttl 1 s)
    for _ in range(rounds):
        if per_round:
            old |= add_results(url, next_id, per_round)
            next_id += per_round
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True)
        began = time.monotonic()
        try:  # killed in start-up, extraction, commit or purge
            proc.wait(timeout=watch + rng.uniform(0.05, 0.9 * span))
            # it finished first: runs take this long now (the machine's load changes), so aim
            # the next kills inside that
            span = min(span, max(0.2, time.monotonic() - began - watch))
            watch = 0.0
        except subprocess.TimeoutExpired:
            killed += 1
            watch = 1.2
        with contextlib.suppress(ProcessLookupError):  # (none left when it finished first)
            os.killpg(proc.pid, signal.SIGKILL)  # the run and every process it started
        proc.wait()
        lost |= old - in_source(url) - set(committed_ids(archive))
    final = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if final.returncode:
        raise RuntimeError(f"the final run failed: {final.stdout}{final.stderr}")
    counts = Counter(i for i in committed_ids(archive) if i in old)
    lost |= old - set(counts) - in_source(url)
    return Outcome(rounds, killed, len(lost), sum(n - 1 for n in counts.values() if n > 1), len(old & in_source(url)), seed)


def main() -> None:
    import secrets
    import tempfile

    import sqlalchemy as sa
    from conftest import MYSQL_ADMIN, PG_ADMIN

    kind, rounds, extra = sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3:])
    tmp = Path(tempfile.mkdtemp(prefix="kill-loop-"))
    name, admin = f"ca_kill_{secrets.token_hex(3)}", None
    env: dict[str, str] = {}
    if kind in ("sqlite", "s3"):
        url = f"db+sqlite:///{tmp / 'results.db'}"
    else:
        admin = sa.create_engine(PG_ADMIN if kind == "postgresql" else MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
        url = "db+" + sa.make_url(PG_ADMIN if kind == "postgresql" else MYSQL_ADMIN).set(database=name).render_as_string(hide_password=False)
    sink = str(tmp / "archive")
    server = None
    if kind == "s3":
        import boto3
        from helpers import moto_server

        server, env = moto_server("k", "s")
        os.environ.update(env)
        boto3.client("s3").create_bucket(Bucket="kill-loop")
        sink = "s3://kill-loop/arch"
    n = int(os.environ.get("KILL_LOOP_RESULTS", "1000"))  # written before each round
    out = loop(url, sink, set(), rounds, env=env, per_round=n, extra=extra)
    print(f"{kind} {' '.join(extra)}: {out.rounds} rounds ({out.killed} killed while running), {n} new results a round: lost {out.lost}, "
          f"duplicated {out.duplicated}, left in the backend {out.left_in_source}; seed {out.seed}")
    if admin is not None:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql" else ""))
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
