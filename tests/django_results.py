"""Run inside a Django project with django-celery-results (tests/djangoproj): writes results with
Celery's own django-db backend, ages them, and reads them back with AsyncResult, printing JSON.

    python tests/django_results.py migrate|write|age DAYS|get ID...   (CA_DJANGO_DB, CA_SERIALIZER)
    python tests/django_results.py serve    one JSON command a line on stdin, one JSON answer a line

``serve`` keeps one Django process for a whole test module (tests/backends.py): Django's start
costs about a second, a command a few milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")

import django

django.setup()

from celery import Celery  # noqa: E402
from celery.app.task import Context  # noqa: E402

serializer = os.environ.get("CA_SERIALIZER", "json")
app = Celery("djangoproj", set_as_current=True)
app.conf.update(result_backend="django-db", result_extended=True, result_serializer=serializer,
                accept_content=["json", "pickle"], result_accept_content=["json", "pickle"])


def req(tid: str, name: str) -> Context:
    return Context(id=tid, task=name, args=[1, "two"], kwargs={"k": 3}, hostname="worker1@host", retries=1,
                   delivery_info={"routing_key": "billing"}, argsrepr="[1, 'two']", kwargsrepr="{'k': 3}")


def write() -> None:
    from celery.result import AsyncResult, GroupResult

    b = app.backend
    for i in range(8):
        b.store_result(f"ok-{i}", {"n": i, "at": "2026-03-04T05:06:07", "items": [1, 2, 3]}, "SUCCESS", request=req(f"ok-{i}", "shop.checkout"))
    try:
        raise ValueError("card declined", 7)
    except ValueError as exc:
        b.mark_as_failure("fail-0", exc, traceback=traceback.format_exc(), request=req("fail-0", "shop.charge"))
    b.mark_as_revoked("revoked-0", "terminated", request=req("revoked-0", "shop.slow"))
    b.store_result("running-0", None, "STARTED", request=req("running-0", "shop.slow"))
    GroupResult("grp-0", [AsyncResult("ok-0", app=app), AsyncResult("ok-1", app=app)], app=app).save(backend=b)


def age(days: int, keep: list[str]) -> None:
    from django.db.models import F
    from django_celery_results.models import GroupResult, TaskResult

    TaskResult.objects.exclude(task_id__in=keep).update(date_done=F("date_done") - dt.timedelta(days=days))
    GroupResult.objects.update(date_done=F("date_done") - dt.timedelta(days=days))


def get(ids: list[str]) -> None:
    from django_celery_results.models import GroupResult, TaskResult

    out = {}
    for tid in ids:
        if tid.startswith("grp-"):
            g = app.GroupResult.restore(tid)
            row = GroupResult.objects.filter(group_id=tid).values().first()
            out[tid] = {"children": [r.id for r in g.results] if g else None,
                        "row": {k: str(v) for k, v in (row or {}).items() if k != "id"}}
            continue
        r = app.AsyncResult(tid)
        res = r.result
        row = TaskResult.objects.filter(task_id=tid).values().first()
        out[tid] = {"state": r.state, "result": repr(res) if isinstance(res, Exception) else res, "name": r.name,
                    "args": r.args, "kwargs": r.kwargs, "worker": r.worker,
                    "date_done": None if r.date_done is None else str(r.date_done), "traceback": r.traceback,
                    "row": {k: str(v) for k, v in (row or {}).items() if k != "id"}}
    print(json.dumps(out, default=str))


def serve() -> None:
    """Commands (JSON objects with ``op``) from stdin: store, fail, revoke, group, age, get,
    clear, migrate; each answered with one JSON line ({"ok": ...} or {"error": traceback})."""
    from celery.result import AsyncResult, GroupResult
    from django.db import connection
    from django_celery_results.models import GroupResult as GroupRow
    from django_celery_results.models import TaskResult

    b = app.backend
    for line in sys.stdin:
        cmd = json.loads(line)
        op, tid = cmd["op"], cmd.get("id", "")
        try:
            out: object = None
            if op == "store":
                b.store_result(tid, cmd["result"], cmd["state"], request=req(tid, cmd.get("name", "shop.checkout")))
            elif op == "fail":
                try:
                    raise ValueError("card declined", 7)
                except ValueError as exc:
                    b.mark_as_failure(tid, exc, traceback=traceback.format_exc(), request=req(tid, "shop.charge"))
            elif op == "forget":
                b.forget(tid)
            elif op == "revoke":
                b.mark_as_revoked(tid, "terminated", request=req(tid, "shop.slow"))
            elif op == "group":
                GroupResult(tid, [AsyncResult(c, app=app) for c in cmd["children"]], app=app).save(backend=b)
            elif op == "age":
                age(int(cmd["days"]), [])
            elif op == "get":
                out = {}
                for t in cmd["ids"]:
                    if cmd.get("kind") == "group":
                        g = app.GroupResult.restore(t)
                        out[t] = None if g is None else [r.id for r in g.results]
                    else:
                        r = app.AsyncResult(t)
                        res = r.get(timeout=5, propagate=False) if r.ready() else r.result
                        out[t] = [r.state, repr(res) if isinstance(res, Exception) else res]
            elif op == "clear":
                TaskResult.objects.all().delete()
                GroupRow.objects.all().delete()
            elif op == "migrate":
                from django.core.management import call_command

                call_command("migrate", "django_celery_results", verbosity=0)
            elif op == "close":
                connection.close()
            else:
                raise ValueError(f"unknown op {op!r}")
            print(json.dumps({"ok": out}, default=str), flush=True)
        except Exception:  # noqa: BLE001 - any failure is sent to the test, which fails with its traceback
            print(json.dumps({"error": traceback.format_exc()}), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "migrate":
        from django.core.management import call_command

        call_command("migrate", "django_celery_results", verbosity=0)
    elif cmd == "write":
        write()
    elif cmd == "age":
        age(int(sys.argv[2]), sys.argv[3:])
    elif cmd == "store":  # the task ran again
        app.backend.store_result(sys.argv[2], "fixed on retry", "SUCCESS", request=req(sys.argv[2], "shop.charge"))
    elif cmd == "get":
        get(sys.argv[2:])
    elif cmd == "serve":
        serve()
