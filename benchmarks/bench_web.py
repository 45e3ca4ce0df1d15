"""Web page latency: `celery-archive serve` over a local archive of 1,000,000 results, one
result page (/results/<id>) per random id, timed by the server itself (its Server-Timing
header: from the request's arrival to the response's start) and by the client (round trip on
a kept-alive connection). Measured in the same run: the Python API's `find()` for the same ids
(the restore index lookup the page makes, without the page) and `celery-archive restore ID`
as a fresh process (what a user does without the page).

Target (issue 22): one result page <= 20 ms server time p50, the restore index cached in-process.

The archive is made once and kept in /tmp/bench-web-archive (delete it to make it again):
100 results written by Celery's own DatabaseBackend into SQLite (result_extended, one failure
in ten), cloned by SQL to --results rows with random uuid ids and date_done spread over the 30
days that end 30 days ago, then archived by 10 real runs (`celery_archive.run`, each taking
3 more days, verified and purged) and `celery-archive index compact`. 1,000,000 results take
~2.5 min to make on the 2-core machine.

    .venv/bin/python benchmarks/bench_web.py [--results 1000000] [--lookups 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_samples

from celery_archive import RunConfig, find, open_sink, run

HOME = Path("/tmp/bench-web-archive")
BIN = Path(sys.executable).parent
RUNS = 10


def make_archive(results: int, home: Path = HOME) -> Path:
    archive, marker = home / "archive", home / "made.json"
    if marker.exists() and json.loads(marker.read_text()).get("results") == results:
        return archive
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    t0 = time.perf_counter()
    db = home / "results.db"
    from celery import Celery

    app = Celery("bench", backend=f"db+sqlite:///{db}", set_as_current=False)
    app.conf.result_extended = True
    write_samples(app)
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(celery_taskmeta)") if r[1] not in ("id", "task_id", "date_done")]
    step = 30 * 86400 / results
    con.execute("CREATE TEMP TABLE sample AS SELECT *, row_number() OVER (ORDER BY id) AS rn FROM celery_taskmeta")
    con.execute(f"""
        INSERT INTO celery_taskmeta (task_id, date_done, {', '.join(cols)})
        WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {results})
        SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' ||
                     hex(randomblob(2)) || '-' || hex(randomblob(6))),
               strftime('%Y-%m-%d %H:%M:%f', 'now', '-60 days', '+' || (n * {step}) || ' seconds'),
               {', '.join('s.' + c for c in cols)}
        FROM g JOIN sample s ON s.rn = (n % 100) + 1""")
    con.execute("DELETE FROM celery_taskmeta WHERE task_id LIKE 'sample-%'")
    con.commit()
    con.close()
    print(f"made {results:,} results in SQLite: {time.perf_counter() - t0:.1f} s")
    for i in range(RUNS):  # each run takes 3 more days of the 30
        older = dt.timedelta(days=60) - dt.timedelta(days=30) * (i + 1) / RUNS - dt.timedelta(seconds=1)
        run(RunConfig(source=f"db+sqlite:///{db}", sink=str(archive), older_than=older))
    subprocess.run([str(BIN / "celery-archive"), "index", "compact", "--sink", str(archive)], check=True, stdout=subprocess.DEVNULL)
    db.unlink()
    marker.write_text(json.dumps({"results": results}))
    print(f"archived them in {RUNS} runs and compacted the index: {time.perf_counter() - t0:.1f} s in all")
    return archive


def sample_ids(archive: Path, n: int) -> list[str]:
    import pyarrow.dataset as ds

    ids = ds.dataset(str(archive / "data"), format="parquet", partitioning="hive").to_table(columns=["task_id"]).column("task_id")
    if len(ids) < n:
        raise SystemExit(f"the archive holds {len(ids)} results, fewer than --lookups {n}")
    return random.Random(22).sample(ids.to_pylist(), n)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def serve(archive: Path) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen([str(BIN / "celery-archive"), "serve", "--sink", str(archive), "--port", "0", "--json"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("celery-archive serve did not start")
    url = json.loads(line)["url"]
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return proc, host, int(port)


def measure_pages(host: str, port: int, ids: list[str], label: str) -> float:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    server, client = [], []
    for tid in ids:
        t0 = time.perf_counter()
        conn.request("GET", f"/results/{tid}")
        resp = conn.getresponse()
        body = resp.read()
        client.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200 or tid.encode() not in body:
            raise SystemExit(f"/results/{tid}: {resp.status}")
        server.append(float(resp.getheader("server-timing", "app;dur=nan").split("dur=")[1]))
    conn.close()
    p50 = statistics.median(server)
    print(f"result page, {label}: {len(ids)} random ids, server time p50 {p50:.1f} ms, p90 {pct(server, 0.9):.1f} ms, "
          f"p99 {pct(server, 0.99):.1f} ms; round trip p50 {statistics.median(client):.1f} ms")
    return p50


def measure_find(archive: Path, ids: list[str]) -> float:
    sink = open_sink(str(archive))
    times = []
    for tid in ids:
        t0 = time.perf_counter()
        found = find(sink, [tid])
        times.append((time.perf_counter() - t0) * 1000)
        assert [r["task_id"] for r in found.records] == [tid]
    p50 = statistics.median(times)
    print(f"Python API find(), no cache: {len(ids)} ids, p50 {p50:.1f} ms, p99 {pct(times, 0.99):.1f} ms")
    return p50


def measure_cli(archive: Path, ids: list[str]) -> float:
    times = []
    for tid in ids:
        t0 = time.perf_counter()
        out = subprocess.run([str(BIN / "celery-archive"), "restore", tid, "--sink", str(archive)], capture_output=True, text=True)
        times.append((time.perf_counter() - t0) * 1000)
        if out.returncode or tid not in out.stdout:
            raise SystemExit(f"celery-archive restore {tid} failed: {out.stderr}")
    p50 = statistics.median(times)
    print(f"`celery-archive restore ID` as a fresh process: {len(ids)} ids, p50 {p50:.0f} ms")
    return p50


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--cli-lookups", type=int, default=20)
    ap.add_argument("--home", type=Path, default=HOME, help="Where the archive is made and kept.")
    args = ap.parse_args()
    archive = make_archive(args.results, args.home)
    ids = sample_ids(archive, args.lookups + 200)
    warm, ids = ids[:200], ids[200:]
    proc, host, port = serve(archive)
    try:
        measure_pages(host, port, warm, "warm-up (first requests of the process: index packs and footers read)")
        first = measure_pages(host, port, ids, "first view of each id")
        again = measure_pages(host, port, ids, "the same ids again (everything cached)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    api = measure_find(archive, ids)
    cli = measure_cli(archive, ids[: args.cli_lookups])
    print(f"ratio page server time / find() (p50): {first / api:.2f}x first view, {again / api:.2f}x cached; "
          f"`restore` process / page: {cli / first:.0f}x")
    print(f"target: result page p50 <= 20 ms server time: {'met' if first <= 20 else 'NOT met'} ({first:.1f} ms, first view)")
    if first > 20:
        sys.exit(1)


if __name__ == "__main__":
    main()
