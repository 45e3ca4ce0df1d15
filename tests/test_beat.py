"""setup_beat with a real Celery worker and beat (embedded, -B) on a real broker (Redis): the
archive appears, the backend shrinks, and beat never runs celery.backend_cleanup itself."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import ROOT, age_rows, celery_app, table_rows

from celery_archive.integration import CLEANUP, TASK_NAME


def test_beat_runs_the_archive_in_place_of_backend_cleanup(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(20):
        app.backend.store_result(f"old-{i}", {"n": i}, "SUCCESS")
    app.backend.store_result("recent-0", 1, "SUCCESS")
    age_rows(sqlite_url, 40, "task_id <> 'recent-0'")
    sink = tmp_path / "archive"
    queue = f"ca-beat-{secrets.token_hex(3)}"
    (tmp_path / "beatproj.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        import celery_archive

        app = Celery("beatproj", broker="redis://127.0.0.1:6379/15", backend="{sqlite_url}")
        app.conf.update(result_expires=3600, task_default_queue="{queue}", broker_connection_retry_on_startup=True)
        celery_archive.setup_beat(app, sink="{sink}", schedule=2.0, older_than="30d")
    """))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "celery"), "-A", "beatproj", "worker", "-B", "--concurrency", "1", "--pool", "solo",
         "--loglevel", "INFO", "-Q", queue, "-s", str(tmp_path / "beat-schedule"), "--without-gossip", "--without-mingle"],
        cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if list((sink / "runs").glob("*.json")) and "old-0" not in table_rows(sqlite_url):
                break
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError(f"no archive after 90 s:\n{log.read_text()[-3000:]}")
    finally:
        worker.terminate()
        worker.wait(30)
    left = table_rows(sqlite_url)
    assert not any(tid.startswith("old-") for tid in left) and "recent-0" in left
    manifests = list((sink / "manifests").glob("*.json"))
    assert sum(json.loads(m.read_text())["totals"]["rows"] for m in manifests) == 20
    text = log.read_text()
    assert f"Sending due task {CLEANUP} ({TASK_NAME})" in text  # our task, under cleanup's name
    assert f"Task {TASK_NAME}[" in text and "succeeded" in text
    assert "Task celery.backend_cleanup[" not in text  # Celery's own cleanup never ran


def test_setup_beat_keeps_the_users_schedule() -> None:
    from celery import Celery
    from celery.schedules import crontab

    import celery_archive

    app = Celery("mine", set_as_current=False)
    app.conf.beat_schedule = {"report": {"task": "proj.report", "schedule": 60.0}}
    celery_archive.setup_beat(app, sink="s3://bucket/prefix", older_than="90d")
    entries = app.conf.beat_schedule
    assert entries["report"] == {"task": "proj.report", "schedule": 60.0}
    assert entries[CLEANUP]["task"] == TASK_NAME and entries[CLEANUP]["kwargs"] == {"sink": "s3://bucket/prefix", "older_than": "90d"}
    assert entries[CLEANUP]["schedule"] == crontab(hour=3, minute=30)
    assert TASK_NAME in app.tasks


def test_beat_runs_the_rotating_verify_on_a_real_worker(tmp_path: Path) -> None:
    """setup_beat(verify_schedule=...): beat sends celery_archive.verify, a real worker reads the
    archive back with --max-duration's rule, and the audit log shows that worker's verify."""
    from conftest import cli

    from celery_archive.archive.audit import events
    from celery_archive.integration import VERIFY_TASK
    from celery_archive.sinks import open_sink

    assert cli("demo", "--dir", str(tmp_path / "d"), "--json").returncode == 0
    sink = tmp_path / "d" / "archive"
    before = len(list(events(open_sink(str(sink)))))
    queue = f"ca-beat-{secrets.token_hex(3)}"
    (tmp_path / "verifyproj.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        import celery_archive

        app = Celery("verifyproj", broker="redis://127.0.0.1:6379/15", backend="db+sqlite:///{tmp_path / 'r.db'}")
        app.conf.update(task_default_queue="{queue}", broker_connection_retry_on_startup=True)
        celery_archive.setup_beat(app, sink="{sink}", schedule=86400.0, verify_schedule=2.0,
                                  verify_options={{"max_duration": "1h"}})
    """))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "celery"), "-A", "verifyproj", "worker", "-B", "--concurrency", "1", "--pool", "solo",
         "--loglevel", "INFO", "-Q", queue, "-s", str(tmp_path / "beat-schedule"), "--without-gossip", "--without-mingle"],
        cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            verifies = [e for e in list(events(open_sink(str(sink))))[before:] if e["event"] == "verify"]
            if verifies:
                break
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError(f"no verify after 90 s:\n{log.read_text()[-3000:]}")
    finally:
        worker.terminate()
        worker.wait(30)
    (first, *_) = verifies
    assert first["ok"] is True and first["files"] == 18 and first["max_duration"] == 3600 and first["pid"] != os.getpid()
    text = log.read_text()
    assert f"Task {VERIFY_TASK}[" in text and "succeeded" in text
    assert f"Task {TASK_NAME}[" not in text  # the archive entry is not due for a day
