"""Invariant 7: memory is bounded by the batch size and file size limits, not by the number
of results. Peak RSS of a whole run on 5x more results must stay flat."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from conftest import age_rows, celery_app


def backend_with(n: int, tmp: Path) -> str:
    """n expired results cloned in SQL from 50 that Celery's own backend wrote."""
    url = f"db+sqlite:///{tmp / f'r{n}.db'}"
    app = celery_app(url)
    for i in range(50):
        app.backend.store_result(f"seed-{i}", {"i": i, "blob": os.urandom(300).hex()}, "SUCCESS")
    age_rows(url, 40)
    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as c:
        c.exec_driver_sql(f"""
            WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {n // 50})
            INSERT INTO celery_taskmeta (task_id, status, result, date_done, traceback, name, args, kwargs, worker, retries, queue)
            SELECT t.task_id || '-' || g.x, t.status, t.result,
                   strftime('%Y-%m-%d %H:%M:%f000', t.date_done, '-' || (g.x % 20) || ' days'),
                   t.traceback, t.name, t.args, t.kwargs, t.worker, t.retries, t.queue
            FROM celery_taskmeta t, g""")
        c.exec_driver_sql("DELETE FROM celery_taskmeta WHERE task_id LIKE 'seed-%' AND task_id NOT LIKE '%-%-%'")
        assert c.exec_driver_sql("SELECT count(*) FROM celery_taskmeta").scalar_one() == n
    engine.dispose()
    return url


def peak_rss_mib(url: str, sink: Path) -> float:
    exe = Path(sys.executable).parent / "celery-archive"
    proc = subprocess.Popen([str(exe), "run", "--source", url, "--sink", str(sink), "--older-than", "30d",
                             "--batch-size", "2000", "--max-file-size", "2MiB", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
    return usage.ru_maxrss / 1024


def test_peak_memory_does_not_grow_with_the_number_of_results() -> None:
    # both sizes are past the warm-up (imports, threads, the first files: flat from ~50k here)
    with tempfile.TemporaryDirectory() as tmp:
        small = peak_rss_mib(backend_with(50_000, Path(tmp)), Path(tmp) / "a1")
        large = peak_rss_mib(backend_with(250_000, Path(tmp)), Path(tmp) / "a2")
    # 200,000 more results of ~1 KiB each would add ~200 MiB if they were held at once
    assert large - small < 25, f"peak RSS {small:.0f} MiB for 50k results, {large:.0f} MiB for 250k"
