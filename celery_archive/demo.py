"""``celery-archive demo``: the whole flow on an embedded default, no servers.

Celery's own DatabaseBackend writes results into a SQLite file; their ``date_done`` is then
moved back over three weeks (as if they had piled up); a run archives those older than a
week to a local directory as Parquet, verifies and purges them; the archive is then read
as a Hive-partitioned dataset, as DuckDB, Athena or Spark would read it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import shutil
import sqlite3
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery_archive.archive.catalog import verify_archive
from celery_archive.config import RunConfig, parse_duration
from celery_archive.errors import ConfigError
from celery_archive.pipeline.run import DryRunReport, run

MARKER = ".celery-archive-demo"
Say = Callable[[str], None] | None


def _prepare(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise ConfigError(f"{directory} exists and is not a demo directory; pick another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by celery-archive demo; safe to delete\n")


def fill_backend(url: str, count: int = 300) -> dict[str, int]:
    """Results written by Celery's own DatabaseBackend: successes, failures, revoked, groups."""
    from celery import Celery
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    app = Celery("demo", backend=url)
    app.conf.result_extended = True
    backend = app.backend
    written: dict[str, int] = {"SUCCESS": 0, "FAILURE": 0, "REVOKED": 0, "STARTED": 0, "groups": 0}
    ids: list[str] = []
    for i in range(count):
        tid = f"demo-{i:05d}"
        name = ("shop.checkout", "reports.monthly", "mail.send")[i % 3]
        req = Context(id=tid, task=name, args=[i, f"order-{i}"], kwargs={"priority": i % 4},
                      hostname=f"worker{i % 2}@demo", retries=i % 2, delivery_info={"routing_key": "celery"})
        if i % 10 == 7:
            try:
                raise ValueError(f"card declined for order-{i}", i)
            except ValueError as exc:
                backend.mark_as_failure(tid, exc, traceback=traceback.format_exc(), request=req)
            written["FAILURE"] += 1
        elif i % 50 == 13:
            backend.mark_as_revoked(tid, "revoked by user", request=req)
            written["REVOKED"] += 1
        elif i % 100 == 99:
            backend.store_result(tid, {"pid": 4242, "hostname": "worker0@demo"}, "STARTED", request=req)
            written["STARTED"] += 1
        else:
            backend.store_result(tid, {"order": i, "total": decimal.Decimal(f"{i}.99"),
                                       "paid_at": dt.datetime(2026, 1, 1, 12, 0) + dt.timedelta(minutes=i)}, "SUCCESS", request=req)
            written["SUCCESS"] += 1
        ids.append(tid)
    for g in range(0, 30, 5):
        gid = f"demo-group-{g:03d}"
        backend.save_group(gid, GroupResult(gid, [AsyncResult(t, app=app) for t in ids[g : g + 5]], app=app))
        written["groups"] += 1
    return written


def _age(db: Path) -> None:
    """Spread the demo results' date_done over the last three weeks."""
    con = sqlite3.connect(db)
    with con:
        for table in ("celery_taskmeta", "celery_tasksetmeta"):
            shifted = "strftime('%Y-%m-%d %H:%M:%f000', date_done, '-' || ((id * 5) % 21) || ' days')"
            con.execute(f"UPDATE {table} SET date_done = {shifted} WHERE date_done IS NOT NULL")
    con.close()


def _remaining(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT (SELECT count(*) FROM celery_taskmeta) + (SELECT count(*) FROM celery_tasksetmeta)").fetchone()[0])
    finally:
        con.close()


def run_demo(directory: Path, say: Say = None) -> dict[str, Any]:
    out = say or (lambda _msg: None)
    directory = directory.absolute()
    _prepare(directory)
    db, archive = directory / "results.db", directory / "archive"
    url = f"db+sqlite:///{db}"
    written = fill_backend(url)
    _age(db)
    before = _remaining(db)
    out(f"1. Celery's DatabaseBackend wrote {before} results into {db} (dated over the last three weeks)")
    cfg = RunConfig(source=url, sink=str(archive), older_than=parse_duration("7d"))
    plan = run(RunConfig(**{**cfg.__dict__, "dry_run": True}))
    assert isinstance(plan, DryRunReport)
    out(f"2. dry run: {plan.selected} finished results are older than 7 days: " + ", ".join(f"{k} {v}" for k, v in plan.by_status.items()))
    report = run(cfg)
    assert not isinstance(report, DryRunReport)
    out(f"3. run {report.run_id}: archived {report.archived} results in {report.files} Parquet files, verified {report.verified}, deleted {report.deleted}")
    check = verify_archive(str(archive))
    out(f"4. verify: {'ok' if check.ok else 'FAILED'}, {check.files} files and {check.rows} results read back and checked")

    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(archive / "data", format="parquet", partitioning="hive").to_table()
    by_status = {r["status"] or "(group)": r["count"] for r in table.group_by("status").aggregate([("task_id", "count")])
                 .rename_columns(["status", "count"]).to_pylist()}
    failure = table.filter(pc.equal(table["status"], "FAILURE")).slice(0, 1).to_pylist()
    out(f"5. the archive read as a Hive-partitioned dataset: {table.num_rows} rows over {len(set(table['date'].to_pylist()))} days: {by_status}")
    if failure:
        out(f"   a failure, queryable: task {failure[0]['task_id']} {failure[0]['name']} -> {failure[0]['result']}")
    after = _remaining(db)
    out(f"6. the backend kept {after} results (newer than 7 days, or not finished)")
    out(f"next: celery-archive runs --sink {archive}   |   celery-archive restore demo-00087 --sink {archive}   |   "
        f"celery-archive query --sink {archive} \"select name, status, count(*) from results group by all\"")
    return {"directory": str(directory), "written": written, "run": report.to_json(), "verify_ok": check.ok,
            "archived_rows": table.num_rows, "by_status": by_status, "backend_before": before, "backend_after": after}
