"""django-celery-results behind the contract suites' interface (tests/backends.py): its own
DatabaseBackend writes and reads, in one Django process per test module (django_results.py
``serve``: Django starts in about a second, a command takes milliseconds)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from backends import OnDatabase
from conftest import ROOT

from celery_archive import RunConfig, parse_duration


class DjangoBackend(OnDatabase):
    """django-celery-results' DatabaseBackend, in one Django process of the test module's."""

    TABLES = ("django_celery_results_taskresult", "django_celery_results_groupresult")
    scheme = "django+"

    def __init__(self, kind: str, db: str, empty_db: str) -> None:
        super().__init__(kind, db)
        self.empty_db = empty_db
        self.where = self.TABLES[0]
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "django_results.py"), "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "CA_DJANGO_DB": db})
        self.call("migrate")

    def call(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "the Django process ended"}')
        if "error" in answer:
            pytest.fail(f"django-celery-results {op}: {answer['error']}")
        return answer["ok"]

    def store(self, tid: str, result: Any, state: str = "SUCCESS") -> None:
        self.call("store", id=tid, result=result, state=state)

    def fail(self, tid: str) -> None:
        self.call("fail", id=tid)

    def forget(self, tid: str) -> None:
        self.call("forget", id=tid)

    def revoke(self, tid: str) -> None:
        self.call("revoke", id=tid)

    def group(self, gid: str, children: list[str]) -> None:
        self.call("group", id=gid, children=children)

    def split(self) -> dt.datetime:
        self.call("age", days=40)
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=20)

    def get(self, tid: str) -> tuple[str, Any]:
        state, result = self.call("get", ids=[tid])[tid]
        return state, result

    def group_children(self, gid: str) -> list[str] | None:
        children: list[str] | None = self.call("get", ids=[gid], kind="group")[gid]
        return children

    def snapshot(self) -> dict[str, Any]:
        engine = sa.create_engine(self.db)
        with engine.connect() as conn:
            out = {t: sorted(tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t}"))) for t in self.TABLES}
        engine.dispose()
        return out

    def held(self) -> set[str]:
        engine = sa.create_engine(self.db)
        with engine.connect() as conn:
            ids = {r[0] for r in conn.execute(sa.text(f"SELECT task_id FROM {self.TABLES[0]}"))}
            ids |= {r[0] for r in conn.execute(sa.text(f"SELECT group_id FROM {self.TABLES[1]}"))}
        engine.dispose()
        return ids

    def reset(self) -> None:
        self.call("clear")

    def no_results_here(self) -> tuple[RunConfig, str]:
        return RunConfig(source="django+" + self.empty_db, sink="unused", older_than=parse_duration("1s")), self.TABLES[0]

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
