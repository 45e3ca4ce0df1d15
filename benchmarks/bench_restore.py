"""Restore latency: one random task id out of 1,000,000 archived results spread over 30 runs,
found through the restore index and read back, via the Python API and the CLI, with the
object reads counted. The baseline, measured in the same run, is what a user does without
an index: a pyarrow dataset scan of the whole archive filtered on the id.

Targets (issue 5): p50 <= 30 ms on the local sink, at most 3 object reads per id.

With --cli-only, only `celery-archive restore ID --sink DIR --json` as a fresh process, against
the start-up of bare interpreters measured in the same rounds, in alternating order:
`python -c pass`, `python -c "import pyarrow"` (the least a Parquet reader in Python loads) and
`python -c "import pyarrow.parquet"` (what reading Parquet the usual way costs before anything
is read). The archive is bench_web.py's (1,000,000 results from SQLite, made once
and kept in --home), or --sink names one. Target (issue 20): CLI restore p50 <= 120 ms.
Each child is given the code it is to run, whatever this process's environment holds: the
restore runs this checkout's celery_archive (PYTHONPATH=<this checkout>), `--baseline-src DIR`
another checkout's (PYTHONPATH=DIR: an A/B in the same rounds, e.g. against main), and the bare
interpreters run with no PYTHONPATH. The file each one imports is printed.

    .venv/bin/python benchmarks/bench_restore.py [--results 1000000] [--runs 30] [--lookups 1000]
    .venv/bin/python benchmarks/bench_restore.py --cli-only [--results 1000000] [--cli-lookups 60] [--sink DIR] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from bench_sql import drop, make_template, url_for

from celery_archive import RunConfig, find, open_sink, run
from celery_archive.index.packs import state

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]  # this checkout: its celery_archive is the one measured


def fill(rows: int) -> str:
    """A PostgreSQL database holding `rows` results, cloned from 100 that Celery's own backend
    wrote, with date_done spread evenly over the 30 days that end 30 days ago."""
    step = 30 * 86400 / rows
    return make_template(rows, f"(now() at time zone 'utc') - interval '60 days' + g * interval '{step} seconds'", "ca_bench_restore")


def sample_ids(db: str, n: int) -> list[str]:
    engine = sa.create_engine(url_for(db))
    with engine.connect() as c:
        ids = [r[0] for r in c.exec_driver_sql(f"SELECT task_id FROM celery_taskmeta ORDER BY random() LIMIT {n}")]
    engine.dispose()
    return ids


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--cli-lookups", type=int, default=30)
    ap.add_argument("--scans", type=int, default=3)
    ap.add_argument("--s3-lookups", type=int, default=300)
    ap.add_argument("--cli-only", action="store_true", help="Only the CLI's fresh-process restore, against bare interpreters.")
    ap.add_argument("--sink", type=Path, default=None, help="--cli-only: an existing local archive (default: bench_web's).")
    ap.add_argument("--home", type=Path, default=None, help="--cli-only: where bench_web's archive is made and kept.")
    ap.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                    help="--cli-only: another checkout (e.g. /work/main) whose celery_archive restores in the same rounds (an A/B).")
    ap.add_argument("--baseline-bin", type=Path, default=None, metavar="PATH",
                    help="--cli-only: another install's celery-archive executable (run without PYTHONPATH), in the same rounds.")
    args = ap.parse_args()
    if args.cli_only:
        cli_only(args)
        return

    db = fill(args.results)
    try:
        ids = sample_ids(db, args.lookups)
        with tempfile.TemporaryDirectory(prefix="ca-bench-restore-") as tmp:
            sink = Path(tmp) / "archive"
            t0 = time.perf_counter()
            for i in range(args.runs):  # each run takes one more 30th of the results
                older = dt.timedelta(days=60) - dt.timedelta(days=30) * (i + 1) / args.runs - dt.timedelta(seconds=1)
                run(RunConfig(source="db+" + url_for(db), sink=str(sink), older_than=older))
            print(f"archived {args.results:,} results in {args.runs} runs: {time.perf_counter() - t0:.1f} s")
            st = state(open_sink(str(sink)))
            print(f"index after the runs: generation {st.generation}, {st.buckets} packs, {len(st.deltas)} run file(s) not compacted")
            measure_api(str(sink), ids, "local sink, before explicit compaction")
            subprocess.run([str(BIN / "celery-archive"), "index", "compact", "--sink", str(sink)], check=True, stdout=subprocess.DEVNULL)
            st = state(open_sink(str(sink)))
            print(f"index after `index compact`: generation {st.generation}, {st.buckets} packs, {len(st.deltas)} run file(s)")
            p50 = measure_api(str(sink), ids, "local sink, after compaction")
            measure_cli(str(sink), ids[: args.cli_lookups])
            baseline = measure_scan(sink, ids[: args.scans])
            print(f"ratio scan / index lookup (p50): {baseline / p50:.0f}x")
            measure_s3(sink, ids[: args.s3_lookups])
    finally:
        drop(db)


def measure_api(url: str, ids: list[str], label: str) -> float:
    times, reads, lists = [], [], []
    sink = open_sink(url)  # opened once, as a program restoring many ids would (an S3 client costs ~50 ms)
    for tid in ids:
        t0 = time.perf_counter()
        found = find(sink, [tid])
        times.append((time.perf_counter() - t0) * 1000)
        if [r["task_id"] for r in found.records] != [tid]:
            raise SystemExit(f"lookup of {tid} returned {found.records and found.records[0]['task_id']} / missing {found.missing}")
        reads.append(found.reads)
        lists.append(found.lists)
    p50 = statistics.median(times)
    print(f"Python API, {label}: {len(ids)} random ids, p50 {p50:.1f} ms, p99 {pct(times, 0.99):.1f} ms, "
          f"object reads per id max {max(reads)} (mean {statistics.mean(reads):.2f}), listings per id {max(lists)}")
    return p50


def measure_cli(sink: str, ids: list[str]) -> None:
    times = []
    for tid in ids:
        t0 = time.perf_counter()
        out = subprocess.run([str(BIN / "celery-archive"), "restore", tid, "--sink", sink, "--json"], capture_output=True, text=True)
        times.append((time.perf_counter() - t0) * 1000)
        if out.returncode or tid not in out.stdout:
            raise SystemExit(f"celery-archive restore {tid} failed: {out.stderr}")
    print(f"CLI (a fresh process each, Python start-up included), local sink: {len(ids)} random ids, "
          f"p50 {statistics.median(times):.0f} ms, p99 {pct(times, 0.99):.0f} ms")


def cli_only(args: argparse.Namespace) -> None:
    """The CLI restore of one random id per round, as a fresh process, and bare interpreters'
    start-up in the same rounds (order rotated each round)."""
    from bench_web import HOME, make_archive
    from bench_web import sample_ids as archived_ids
    from common import rotated

    sink = args.sink or make_archive(args.results, args.home or HOME)
    ids = archived_ids(sink, args.cli_lookups)
    py = sys.executable
    # bytecode is written and used, as in an installed package (pip compiles it there): an
    # environment with PYTHONDONTWRITEBYTECODE would compile every module of an editable
    # install at each start (~50 ms here). It goes to a cache of this run, not the checkouts.
    cache = tempfile.mkdtemp(prefix="ca-bench-pycache-")
    plain = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}, "PYTHONPYCACHEPREFIX": cache}

    def restore(exe: Path, src: Path | None) -> tuple[Callable[[str], list[str]], dict[str, str]]:
        env = plain if src is None else {**plain, "PYTHONPATH": str(src)}
        return (lambda tid: [str(exe), "restore", tid, "--sink", str(sink), "--json"]), env

    contenders: dict[str, tuple[Callable[[str], list[str]], dict[str, str]]] = {
        "python -c pass": (lambda _tid: [py, "-c", "pass"], plain),
        "python -c 'import pyarrow'": (lambda _tid: [py, "-c", "import pyarrow"], plain),
        "python -c 'import pyarrow.parquet'": (lambda _tid: [py, "-c", "import pyarrow.parquet"], plain),
        "celery-archive restore ID": restore(BIN / "celery-archive", ROOT),
    }
    if args.baseline_src:
        contenders["baseline restore ID"] = restore(BIN / "celery-archive", args.baseline_src.resolve())
    elif args.baseline_bin:
        contenders["baseline restore ID"] = restore(args.baseline_bin, None)
    for label, (_make, env) in contenders.items():
        if "restore" in label:  # the code each restore runs, as its own process imports it
            where = subprocess.run([py, "-c", "import celery_archive; print(celery_archive.__file__)"], env=env, cwd=cache,
                                   capture_output=True, text=True, check=True).stdout.strip()  # cwd: not a checkout
            print(f"{label}: {where}")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(2):  # warm the page cache and write the bytecode
        for make, env in contenders.values():
            subprocess.run(make(ids[0]), capture_output=True, check=True, env=env)
    for r, tid in enumerate(ids):
        for label in rotated(list(contenders), r):
            t0 = time.perf_counter()
            make, env = contenders[label]
            out = subprocess.run(make(tid), capture_output=True, text=True, env=env)
            times[label].append((time.perf_counter() - t0) * 1000)
            if out.returncode or ("restore" in label and tid not in out.stdout):
                raise SystemExit(f"{label} for {tid} failed: {out.stderr[-2000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    print(f"fresh processes, {len(ids)} rounds (order rotated each round), archive {sink}:")
    p50 = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:38s} p50 {p50[k]:6.0f} ms   p90 {pct(v, 0.9):6.0f} ms")
    ours, bare, arrow = p50["celery-archive restore ID"], p50["python -c pass"], p50["python -c 'import pyarrow.parquet'"]
    least = p50["python -c 'import pyarrow'"]
    print(f"ratio CLI restore / python -c pass (p50): {ours / bare:.2f}x; "
          f"/ import pyarrow.parquet: {ours / arrow:.2f}x; the command adds {ours - arrow:.0f} ms to pyarrow.parquet's start-up, "
          f"{ours - least:.0f} ms to pyarrow's")
    if "baseline restore ID" in p50:
        print(f"ratio CLI restore / baseline restore (p50): {ours / p50['baseline restore ID']:.2f}x   "
              f"(A/B: {args.baseline_src or args.baseline_bin})")
    print(f"target: CLI restore p50 <= 120 ms: {ours:.0f} ms ({'met' if ours <= 120 else 'not met'})")


def measure_s3(local: Path, ids: list[str]) -> None:
    """The same archive copied to moto's S3 server (its own process, real HTTP)."""
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        client = boto3.client("s3")
        for _ in range(50):
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.1)
        for path in local.rglob("*"):
            if path.is_file() and ".tmp-" not in str(path):
                client.upload_file(str(path), "bench", "archive/" + path.relative_to(local).as_posix())
        measure_api("s3://bench/archive", ids, "S3 emulator (moto server)")
    finally:
        server.terminate()
        server.wait()


def measure_scan(sink: Path, ids: list[str]) -> float:
    import pyarrow.dataset as ds

    times = []
    for tid in ids:
        t0 = time.perf_counter()
        t = ds.dataset(str(sink / "data"), format="parquet", partitioning="hive").to_table(filter=ds.field("task_id") == tid)
        times.append((time.perf_counter() - t0) * 1000)
        assert t.num_rows == 1
    p50 = statistics.median(times)
    print(f"baseline, pyarrow dataset scan of the archive for one id: {len(ids)} ids, p50 {p50:.0f} ms")
    return p50


if __name__ == "__main__":
    main()
