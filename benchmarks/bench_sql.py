"""Full `celery-archive run` (extract, Parquet, verify, purge) against the backend's own cleanup
(Celery's `app.backend.cleanup()`, or django-celery-results' `TaskResult.objects.delete_expired()`)
and, on PostgreSQL, against the seed guide's archive script, on identical copies of a database
holding 200,000 expired results, measured in the same run.

Each contender is a fresh process (Python start-up included, as a cron job pays it) on its own
copy of the database, cloned from one template and vacuumed. Prints medians and ratios; exits
non-zero if a contender did not do its job. Targets: run <= 1.5x cleanup's time on PostgreSQL
(issue 20), not worse than 2x on the others, peak RSS <= 300 MiB.

    .venv/bin/python benchmarks/bench_sql.py [--backend postgresql|mysql|sqlite|django|django-mysql|django-sqlite]
                                             [--rows 200000] [--repeats 3]
    .venv/bin/python benchmarks/bench_sql.py --growth 200000 1000000 [--repeats 3]

--growth (issue 20): per-result time of whole runs at each size, the largest against the
smallest (and the same for cleanup, what the database itself does). Target: within 1.15x.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from common import measure, rotated, write_samples
from sqldbs import KINDS, PG, Db, fill_pg

ADMIN = PG
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
    fill_pg(url, rows, date_done)
    return name


def drop(name: str) -> None:
    with admin().connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def contend(db: Db, template: str, label: str, rows: int, baseline_bin: Path | None) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one contender on a fresh copy of ``template``."""
    name = db.clone(template)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if label == db.baseline:
                s, rss, _ = measure(db.cleanup_argv(name))
            elif label in ("celery-archive run", "baseline run"):
                exe = BIN / "celery-archive" if label == "celery-archive run" else baseline_bin
                s, rss, out = measure([str(exe), "run", "--source", db.source(name), "--sink", f"{tmp}/archive",
                                       "--older-than", "30d", "--format", "parquet", "--json"])
                report = json.loads(out)
                assert report["archived"] == report["verified"] == report["deleted"] == rows, report
            else:
                s, rss, out = measure([sys.executable, str(HERE / "seed_archive.py"), db.source(name), "30", f"{tmp}/a.jsonl"])
                assert int(out) == rows
            assert db.remaining(name) == 0, f"{label} left rows behind"
        return s, rss
    finally:
        db.drop(name)


def growth(db: Db, sizes: list[int], repeats: int, baseline_bin: Path | None) -> None:
    """Per-result time of runs (and of the baseline cleanup) at each size, paired in each round."""
    labels = ["celery-archive run", db.baseline]
    secs: dict[tuple[str, int], list[float]] = {(k, n): [] for k in labels for n in sizes}
    templates: dict[int, str] = {}
    try:
        for n in sizes:
            templates[n] = db.make_template(n)
        for r in range(repeats):
            for n in (sizes if r % 2 == 0 else sizes[::-1]):
                for label in rotated(labels, r):
                    secs[label, n].append(contend(db, templates[n], label, n, baseline_bin)[0])
    finally:
        for t in templates.values():
            db.drop(t)
        db.close()
    print(f"per-result time of whole processes by number of expired rows ({db.kind}), median of {repeats}:")
    per = {k: statistics.median(v) / k[1] * 1e6 for k, v in secs.items()}
    for label in labels:
        for n in sizes:
            print(f"  {label:36s} {n:>10,} rows   {statistics.median(secs[label, n]):7.2f} s   {per[label, n]:6.2f} us/result")
    small, big = sizes[0], sizes[-1]
    for label in labels:
        print(f"ratio per-result time {big:,} / {small:,}, {label} = {per[label, big] / per[label, small]:.3f}x"
              + ("   (target <= 1.15x)" if label == "celery-archive run" else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=KINDS, default="postgresql",
                    help="Celery's database backend on PostgreSQL, MariaDB or SQLite, or django-celery-results on one of them.")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-bin", type=Path, default=None, metavar="PATH",
                    help="Another checkout's celery-archive executable, run in the same rounds (an A/B of two versions).")
    ap.add_argument("--growth", type=int, nargs="+", default=None, metavar="N",
                    help="Only the per-result time of runs on each of these numbers of rows (e.g. 200000 1000000).")
    args = ap.parse_args()
    db = Db(args.backend)
    if args.growth:
        growth(db, sorted(args.growth), args.repeats, args.baseline_bin)
        return
    labels = [db.baseline, "celery-archive run"] + (["seed-style archive"] if args.backend == "postgresql" else [])
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in labels}
    if args.baseline_bin:
        results["baseline run"] = []
    template = db.make_template(args.rows)
    try:
        for r in range(args.repeats):
            for label in rotated(list(results), r):
                results[label].append(contend(db, template, label, args.rows, args.baseline_bin))
    finally:
        db.drop(template)
        db.close()
    med = {k: (statistics.median(s for s, _ in v), max(r for _, r in v)) for k, v in results.items()}
    print(f"{args.rows:,} expired rows ({args.backend}), median of {args.repeats} (each a fresh process on a fresh copy):")
    for k, (s, r) in med.items():
        print(f"  {k:36s} {s:6.2f} s   {args.rows / s:9,.0f} rows/s   peak RSS {r:6.1f} MiB")
    ours, cleanup = med["celery-archive run"][0], med[db.baseline][0]
    target = "1.5x" if args.backend == "postgresql" else "2x"
    print(f"ratio run / cleanup      = {ours / cleanup:.2f}x   (target <= {target}; cleanup: {db.baseline})")
    print(f"per round (run, cleanup): {[(round(a[0], 3), round(b[0], 3)) for a, b in zip(results['celery-archive run'], results[db.baseline])]}")
    if "seed-style archive" in med:
        print(f"ratio seed-style / run   = {med['seed-style archive'][0] / ours:.2f}x   (the seed's script is this much slower, and archives no raw bytes)")
    print(f"peak RSS of run          = {med['celery-archive run'][1]:.1f} MiB (target <= 300 MiB)")
    if args.baseline_bin:
        base = med["baseline run"][0]
        print(f"ratio run / baseline run = {ours / base:.3f}x   (A/B: {args.baseline_bin}; below 1 is faster)")
        print(f"per round (run, baseline): {[(round(a[0], 3), round(b[0], 3)) for a, b in zip(results['celery-archive run'], results['baseline run'])]}")


if __name__ == "__main__":
    main()
