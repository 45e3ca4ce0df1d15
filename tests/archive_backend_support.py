"""Shared by the archive+ result backend tests: a Redis server of their own (a free port, no
collision with other test sessions), Celery apps on it, and results written by Celery itself."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server(workdir: Path) -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; run `bash scripts/services.sh`")
    port = free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--unixsocket", str(workdir / "redis.sock")], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        pytest.fail("the test's redis-server did not start")
    yield port
    proc.terminate()
    proc.wait()


def app_for(url: str, serializer: str = "json", accept: list[str] | None = None, **conf: Any) -> Any:
    import secrets

    from celery import Celery

    app = Celery(f"ab{secrets.token_hex(3)}", backend=url, set_as_current=False)
    accept = accept or [serializer, "json"]
    app.conf.update(result_serializer=serializer, result_accept_content=accept, accept_content=accept, result_extended=True,
                    **conf)
    return app


def write_results(app: Any) -> None:
    """SUCCESS (extended), FAILURE, REVOKED and a saved group, written by Celery's own backend."""
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    b = app.backend
    for i in range(6):
        b.store_result(f"ok-{i}", {"n": i, "items": [1, 2]}, "SUCCESS",
                       request=Context(id=f"ok-{i}", task="shop.checkout", args=[i, "x"], kwargs={"k": i}, hostname="w1@h",
                                       retries=1, delivery_info={"routing_key": "billing"}))
    try:
        raise KeyError("card declined")
    except KeyError as exc:
        b.mark_as_failure("fail-0", exc, traceback=traceback.format_exc())
    b.mark_as_revoked("revoked-0", "terminated")
    GroupResult("grp-0", [AsyncResult("ok-0", app=app), AsyncResult("ok-1", app=app)], app=app).save(backend=b)


def seen(app: Any, ids: list[str]) -> dict[str, Any]:
    """What a user reads through AsyncResult for each id."""
    from celery.result import AsyncResult

    out = {}
    for tid in ids:
        r = AsyncResult(tid, app=app)
        res = r.result
        out[tid] = {"state": r.state, "result": repr(res) if isinstance(res, BaseException) else res, "name": r.name,
                    "args": r.args, "kwargs": r.kwargs, "worker": r.worker, "queue": r.queue, "retries": r.retries,
                    "traceback": r.traceback, "date_done": r.date_done}
    return out
