"""Full `celery-archive run` (extract, Parquet, verify, purge) against Celery's own
`app.backend.cleanup()` and against the seed guide's archive script, on identical copies of a
PostgreSQL database holding 200,000 expired results, measured in the same run.

Each contender is a fresh process (Python start-up included, as a cron job pays it) on its own
copy of the database, cloned from one template. Prints medians and ratios; exits non-zero if
a contender did not do its job. Targets (issue 2): run <= 2.0x cleanup's time, peak RSS <= 300 MiB.

    .venv/bin/python benchmarks/bench_sql.py [--rows 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from common import measure, write_samples

ADMIN = os.environ.get("CA_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def admin() -> sa.Engine:
    return sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")


def url_for(db: str) -> str:
    return sa.make_url(ADMIN).set(database=db).render_as_string(hide_password=False)


def make_template(rows: int, date_done: str = "(now() at time zone 'utc') - interval '70 days' + g * interval '10 seconds'",
                  prefix: str = "ca_bench") -> str:
    """A database whose celery_taskmeta holds `rows` expired results cloned from 100 that
    Celery's own DatabaseBackend wrote (json serializer, result_extended); ``date_done`` is
    the SQL for the g-th result's date."""
    from celery import Celery

    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin().connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    url = url_for(name)
    app = Celery("bench", backend="db+" + url, set_as_current=False)
    app.conf.result_extended = True
    write_samples(app)
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TEMP TABLE sample AS SELECT *, row_number() OVER (ORDER BY id) AS rn FROM celery_taskmeta")
        c.exec_driver_sql(f"""
            INSERT INTO celery_taskmeta (id, task_id, status, result, date_done, traceback, children, name, args, kwargs,
                                         worker, retries, queue, stamps)
            SELECT nextval('task_id_sequence'), gen_random_uuid()::text, s.status, s.result,
                   {date_done},
                   s.traceback, s.children, s.name, s.args, s.kwargs, s.worker, s.retries, s.queue, s.stamps
            FROM generate_series(1, {rows}) g JOIN sample s ON s.rn = mod(g, 100) + 1""")
        c.exec_driver_sql("DELETE FROM celery_taskmeta WHERE task_id LIKE 'sample-%%'")
    engine.dispose()
    return name


def clone(template: str) -> str:
    name = f"{template}_c{secrets.token_hex(3)}"
    with admin().connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    e = sa.create_engine(url_for(name), isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.exec_driver_sql("VACUUM ANALYZE celery_taskmeta")
    e.dispose()
    return name


def drop(name: str) -> None:
    with admin().connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def remaining(db: str) -> int:
    e = sa.create_engine(url_for(db))
    with e.connect() as c:
        n = int(c.exec_driver_sql("SELECT count(*) FROM celery_taskmeta").scalar_one())
    e.dispose()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-bin", type=Path, default=None, metavar="PATH",
                    help="Another checkout's celery-archive executable, run in the same rounds (an A/B of two versions).")
    args = ap.parse_args()
    template = make_template(args.rows)
    results: dict[str, list[tuple[float, float]]] = {"celery cleanup": [], "celery-archive run": [], "seed-style archive": []}
    if args.baseline_bin:
        results["baseline run"] = []
    cleanup_code = ("import sys, datetime; from celery import Celery; app = Celery('b', backend=sys.argv[1]); "
                    "app.conf.result_expires = datetime.timedelta(days=30); app.backend.cleanup()")
    try:
        for _ in range(args.repeats):
            for label in results:
                db = clone(template)
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        src = "db+" + url_for(db)
                        if label == "celery cleanup":
                            s, rss, _ = measure([sys.executable, "-c", cleanup_code, src])
                        elif label in ("celery-archive run", "baseline run"):
                            exe = BIN / "celery-archive" if label == "celery-archive run" else args.baseline_bin
                            s, rss, out = measure([str(exe), "run", "--source", src, "--sink", f"{tmp}/archive",
                                                   "--older-than", "30d", "--format", "parquet", "--json"])
                            report = json.loads(out)
                            assert report["archived"] == report["verified"] == report["deleted"] == args.rows, report
                        else:
                            s, rss, out = measure([sys.executable, str(HERE / "seed_archive.py"), src, "30", f"{tmp}/a.jsonl"])
                            assert int(out) == args.rows
                        assert remaining(db) == 0, f"{label} left rows behind"
                    results[label].append((s, rss))
                finally:
                    drop(db)
    finally:
        drop(template)
    med = {k: (statistics.median(s for s, _ in v), max(r for _, r in v)) for k, v in results.items()}
    print(f"{args.rows:,} expired rows on PostgreSQL, median of {args.repeats} (each a fresh process on a fresh copy):")
    for k, (s, r) in med.items():
        print(f"  {k:20s} {s:6.2f} s   {args.rows / s:9,.0f} rows/s   peak RSS {r:6.1f} MiB")
    ours, cleanup, seed = med["celery-archive run"][0], med["celery cleanup"][0], med["seed-style archive"][0]
    print(f"ratio run / cleanup      = {ours / cleanup:.2f}x   (target <= 2.0x)")
    print(f"ratio seed-style / run   = {seed / ours:.2f}x   (the seed's script is this much slower, and archives no raw bytes)")
    print(f"peak RSS of run          = {med['celery-archive run'][1]:.1f} MiB (target <= 300 MiB)")
    if args.baseline_bin:
        base = med["baseline run"][0]
        print(f"ratio run / baseline run = {ours / base:.3f}x   (A/B: {args.baseline_bin}; below 1 is faster)")
        print(f"per round (run, baseline): {[(round(a[0], 3), round(b[0], 3)) for a, b in zip(results['celery-archive run'], results['baseline run'])]}")


if __name__ == "__main__":
    main()
