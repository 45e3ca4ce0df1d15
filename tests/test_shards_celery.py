"""Shards on real Celery workers (prefork, RabbitMQ broker, the app's results on PostgreSQL,
which is also the source): --on-celery archives every result once and purges as a local run
does; the shard tasks' own results are never archived; a worker killed (SIGKILL) mid-shard
loses nothing, and its redelivered shard duplicates nothing. One worker for the module."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_ADMIN, _fresh_database, celery_app, table_rows
from helpers import wait_for
from test_lease_processes import EXE, committed_ids

from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import DATA, run_id_of
from celery_archive.sinks import open_sink

BROKER = os.environ.get("CA_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


class Worker:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url, self.queue = root, url, f"celery_archive_{secrets.token_hex(3)}"
        (root / "shardproj.py").write_text(
            "from celery import Celery\n"
            f"app = Celery('shardproj', broker={BROKER!r}, backend={url!r})\n"
            "app.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1, result_extended=True)\n"
            "import celery_archive\n"
            f"celery_archive.setup_beat(app, sink={str(root / 'beat-archive')!r}, shards=2, older_than='30d')\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": f"{self.root}:{os.environ.get('PYTHONPATH', '')}"}

    def start(self) -> None:
        log = open(self.root / "worker.log", "ab")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "-A", "shardproj", "worker", "-Q", self.queue,
                                      "-I", "celery_archive.tasks", "-c", "2", "--pool", "prefork", "--loglevel", "INFO", "-n", f"{self.queue}@%h",
                                      "--without-mingle", "--without-gossip"],
                                     cwd=self.root, env=self.env(), stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: b"ready." in (self.root / "worker.log").read_bytes(), 60, "the worker to start")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and its pool processes
        self.proc.wait()
        (self.root / "worker.log").write_bytes(b"")

    def run(self, sink: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([EXE, "-A", "shardproj", "run", "--sink", str(sink), "--older-than", "30d", "--on-celery",
                                 "--queue", self.queue, "--json", "--batch-size", "20", "--max-file-size", "8KiB", *extra],
                                cwd=self.root, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    for url in _fresh_database(PG_ADMIN, " WITH (FORCE)"):
        w = Worker(tmp_path_factory.mktemp("celery-shards"), "db+" + url)
        w.start()
        try:
            yield w
        finally:
            if w.proc is not None and w.proc.poll() is None:
                w.kill()


def seed(url: str, tag: str, n: int) -> set[str]:
    from conftest import age_rows

    app = celery_app(url)
    ids = {f"{tag}-{i:04d}" for i in range(n)}
    for tid in sorted(ids):
        app.backend.store_result(tid, {"i": tid, "pad": "x" * 60}, "SUCCESS")
    age_rows(url, 40, f"task_id >= '{tag}-' AND task_id < '{tag}.'")
    app.backend.store_result(f"{tag}-young", {"i": -1}, "SUCCESS")
    return ids


def finished(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    report: dict[str, Any] = json.loads(out.splitlines()[-1])
    return report


def test_on_celery_archives_every_result_once_and_never_its_own_tasks(worker: Worker, tmp_path: Path) -> None:
    taken = seed(worker.url, "c1", 120)
    report = finished(worker.run(tmp_path / "archive", "--shards", "4"))
    assert report["ran_on"] == "celery" and len(report["shards"]) == 4
    assert sum(s["archived"] for s in report["shards"]) == report["archived"] == report["deleted"]
    log = (worker.root / "worker.log").read_text()
    for task in ("celery_archive.shard", "celery_archive.commit", "celery_archive.purge"):  # each step a task on the worker
        assert re.search(rf"Task {task}\[[-0-9a-f]+\] succeeded", log), task
    sink = open_sink(str(tmp_path / "archive"))
    ids = Counter(committed_ids(sink))
    assert taken <= set(ids) and set(ids.values()) == {1}
    rows = table_rows(worker.url)
    assert not taken & set(rows) and "c1-young" in rows
    # the shard and purge tasks' own results: neither archived nor left in the backend
    names = {r["name"] for r in rows.values()}
    assert not any(str(n).startswith("celery_archive.") for n in names), names
    assert not [t for t in ids if t in rows]


def test_a_worker_killed_mid_shard_loses_nothing_and_its_redelivered_shard_duplicates_nothing(worker: Worker,
                                                                                              tmp_path: Path) -> None:
    taken = seed(worker.url, "c2", 160)
    sink_dir = tmp_path / "archive"
    proc = worker.run(sink_dir, "--shards", "2", "--max-rate", "30")  # slow shards: the kill lands inside them
    wait_for(lambda: len(list((sink_dir / "data").rglob("*.parquet"))) >= 2, 90, "the shards' first files")
    worker.kill()
    worker.start()  # the broker redelivers both shards (acks late) to the new worker
    report = finished(proc)
    sink = open_sink(str(sink_dir))
    ids = Counter(committed_ids(sink))
    assert taken <= set(ids) and set(ids.values()) == {1}
    assert report["deleted"] == report["archived"] == len(ids)
    assert not taken & set(table_rows(worker.url))
    listed = {e.key for e in mf.committed_files(sink)}
    stored = {o.key for o in sink.list(DATA) if run_id_of(o.key) == report["run_id"]}
    assert stored == listed  # the first attempts' files were removed


def test_setup_beat_with_shards_runs_them_in_processes_of_the_worker(worker: Worker) -> None:
    from celery import Celery

    taken = seed(worker.url, "c3", 80)
    app = Celery("shardproj", broker=BROKER, backend=worker.url, set_as_current=False)
    import celery_archive

    celery_archive.setup_beat(app, sink=str(worker.root / "beat-archive"), shards=2, older_than="30d")
    entry = app.conf.beat_schedule["celery.backend_cleanup"]
    assert entry["kwargs"]["shards"] == 2
    result = app.send_task(entry["task"], kwargs=entry["kwargs"], queue=worker.queue)  # what beat sends
    report = result.get(timeout=180)
    assert report["ran_on"] == "local" and len(report["shards"]) == 2, report
    ids = Counter(committed_ids(open_sink(str(worker.root / "beat-archive"))))
    assert taken <= set(ids) and set(ids.values()) == {1}
    assert not taken & set(table_rows(worker.url))


def test_no_wait_prints_the_run_id_and_runs_shows_it_running_then_committed(worker: Worker, tmp_path: Path) -> None:
    taken = seed(worker.url, "c4", 100)
    sink = tmp_path / "archive"
    out = finished(worker.run(sink, "--shards", "2", "--max-rate", "20", "--no-wait"))
    assert out["waiting"] is False and out["run_id"]

    def runs() -> dict[str, Any]:
        proc = subprocess.run([EXE, "runs", "--sink", str(sink), "--json"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        answer: dict[str, Any] = json.loads(proc.stdout)
        return answer

    seen = runs()
    assert [r["run_id"] for r in seen["running"]] == [out["run_id"]] and seen["runs"] == []
    wait_for(lambda: [r["state"] for r in runs()["runs"]] == ["purged"], 180, "the background run to finish")
    assert runs()["running"] == [] and runs()["runs"][0]["run_id"] == out["run_id"]
    ids = Counter(committed_ids(open_sink(str(sink))))
    assert taken <= set(ids) and set(ids.values()) == {1}
