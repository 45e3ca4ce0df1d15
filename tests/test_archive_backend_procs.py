"""The archive+ result backend with real processes: a Celery worker (prefork, Redis broker)
producing results through it, archived and purged, then read by the app, by
`celery -A proj result ID`, by a real Flower server's /api/task/result/ID, and by a Django
project on django-celery-results (archive+django-db)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archive_backend_support import free_port, redis_server
from conftest import ROOT, cli
from helpers import archive

PROJ = '''
import os
from celery import Celery, chord

port = os.environ["AB_REDIS_PORT"]
app = Celery("proj", broker=f"redis://127.0.0.1:{port}/1", backend=f"archive+redis://127.0.0.1:{port}/0")
app.conf.update(archive_sink=os.environ["AB_SINK"], result_extended=True, worker_hijack_root_logger=False)


@app.task
def add(x, y):
    return x + y


@app.task
def fail(msg):
    raise KeyError(msg)


@app.task
def total(xs):
    return sum(xs)
'''


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """proj.py on a Redis server of its own, with a real worker running it."""
    work = tmp_path_factory.mktemp("proj")
    (work / "proj.py").write_text(PROJ)
    servers = redis_server(work)
    port = next(servers)
    env = {**os.environ, "AB_REDIS_PORT": str(port), "AB_SINK": str(work / "archive"), "PYTHONPATH": str(work)}
    celery = str(Path(sys.executable).parent / "celery")
    worker = subprocess.Popen([celery, "-A", "proj", "worker", "-P", "prefork", "-c", "2", "-l", "warning",
                               "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"ab{port}@127.0.0.1"],
                              cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = {k: os.environ.get(k) for k in ("AB_REDIS_PORT", "AB_SINK")}
    os.environ.update(AB_REDIS_PORT=str(port), AB_SINK=str(work / "archive"))
    sys.path.insert(0, str(work))
    import proj as module

    try:
        yield {"work": work, "env": env, "port": port, "module": module, "celery": celery, "sink": work / "archive"}
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("proj", None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        worker.terminate()
        worker.wait(30)
        next(servers, None)


@pytest.fixture(scope="module")
def archived_ids(proj: dict[str, Any]) -> dict[str, str]:
    """Results the worker produced (a chord among them), then archived and purged."""
    from celery import chord

    m = proj["module"]
    ok, bad = m.add.delay(2, 2), m.fail.delay("boom")
    assert ok.get(timeout=60) == 4
    with pytest.raises(KeyError):
        bad.get(timeout=60)
    header = [m.add.s(i, i) for i in range(3)]
    body = chord(header)(m.total.s())  # the chord's counters and .j/.s keys live in Redis, never looked up in the archive
    assert body.get(timeout=60) == 6
    report = archive(f"redis://127.0.0.1:{proj['port']}/0", proj["sink"], older_than="0s")
    assert report.deleted >= 5
    from celery.result import AsyncResult

    assert AsyncResult(ok.id, app=m.app).backend.client.get(f"celery-task-meta-{ok.id}") is None  # purged
    return {"ok": ok.id, "bad": bad.id, "chord": body.id}


def test_the_app_reads_what_the_worker_produced(proj: dict[str, Any], archived_ids: dict[str, str]) -> None:
    from celery.result import AsyncResult

    app = proj["module"].app
    fresh = type(app)("proj2", broker=app.conf.broker_url, backend=app.conf.result_backend, set_as_current=False)
    fresh.conf.update(archive_sink=str(proj["sink"]), result_extended=True)
    ok = AsyncResult(archived_ids["ok"], app=fresh)
    assert (ok.state, ok.get(timeout=10), ok.name, ok.args) == ("SUCCESS", 4, "proj.add", [2, 2])
    assert ok.date_done is not None and ok.worker and ok.worker.startswith("ab")
    with pytest.raises(KeyError, match="boom"):
        AsyncResult(archived_ids["bad"], app=fresh).get(timeout=10)
    assert AsyncResult(archived_ids["chord"], app=fresh).get(timeout=10) == 6
    assert proj["module"].add.delay(5, 5).get(timeout=60) == 10  # the worker keeps writing live through archive+


def test_celery_result_command(proj: dict[str, Any], archived_ids: dict[str, str]) -> None:
    run = [proj["celery"], "-A", "proj", "result"]
    out = subprocess.run([*run, archived_ids["ok"]], cwd=proj["work"], env=proj["env"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "4", out.stderr[-2000:]
    out = subprocess.run([*run, "--traceback", archived_ids["bad"]], cwd=proj["work"], env=proj["env"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "KeyError: 'boom'" in out.stdout, out.stdout + out.stderr[-2000:]


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def test_flower_answers_for_an_archived_id(proj: dict[str, Any], archived_ids: dict[str, str]) -> None:
    port = free_port()
    flower = subprocess.Popen([proj["celery"], "-A", "proj", "flower", "--address=127.0.0.1", f"--port={port}"],
                              cwd=proj["work"], env={**proj["env"], "FLOWER_UNAUTHENTICATED_API": "true"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/api/task/result/"
        for _ in range(150):
            try:
                got = _get_json(base + archived_ids["ok"])
                break
            except OSError:
                assert flower.poll() is None, flower.stderr.read().decode()[-3000:] if flower.stderr else ""
                time.sleep(0.1)
        else:
            pytest.fail("flower did not answer")
        assert got == {"task-id": archived_ids["ok"], "state": "SUCCESS", "result": 4}
        failed = _get_json(base + archived_ids["bad"])
        assert failed["state"] == "FAILURE" and "boom" in failed["result"] and "KeyError" in failed["traceback"]
        assert _get_json(base + "never-ran") == {"task-id": "never-ran", "state": "PENDING"}
    finally:
        flower.terminate()
        flower.wait(30)


HELPER = ROOT / "tests" / "django_results.py"
READER = ROOT / "tests" / "django_archive_read.py"


def _django(script: Path, db: str, *args: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CA_DJANGO_DB": db, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(("spelling", "database"), [("archive+django-db", "sqlite"), ("archive+django-db://", "sqlite"),
                                                   ("archive+django-db", "postgresql")])
def test_django_celery_results(tmp_path: Path, spelling: str, database: str, request: pytest.FixtureRequest) -> None:
    from conftest import reset_database

    if database == "sqlite":
        db = f"sqlite:///{tmp_path / 'django.db'}"
    else:
        db = request.getfixturevalue("pg_url")
        reset_database(db)
    sink = tmp_path / "archive"
    ids = ["ok-1", "ok-6", "fail-0", "revoked-0", "grp-0"]
    _django(HELPER, db, "migrate")
    _django(HELPER, db, "write")
    _django(HELPER, db, "age", "40")
    before = json.loads(_django(HELPER, db, "get", *ids))
    proc = cli("run", "--source", "django+" + db, "--sink", str(sink), "--older-than", "30d", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["deleted"] == 11, proc.stdout + proc.stderr
    purged = json.loads(_django(HELPER, db, "get", "ok-1"))
    assert purged["ok-1"]["state"] == "PENDING"
    after = json.loads(_django(READER, db, "get", *ids, CA_ARCHIVE_SINK=str(sink), CA_BACKEND=spelling))
    for tid in ids:
        want, got = dict(before[tid]), dict(after[tid])
        want.pop("row"), got.pop("row")  # the row itself stays purged: read-only
        assert got == want, tid
    assert after["ok-1"]["state"] == "SUCCESS" and after["ok-1"]["result"]["items"] == [1, 2, 3]
    assert after["fail-0"]["result"].startswith("ValueError(") and after["grp-0"]["children"] == ["ok-0", "ok-1"]
