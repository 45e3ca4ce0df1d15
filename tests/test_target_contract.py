"""The Target contract (celery_archive/backends/__init__.py), checked on every result backend:
results archived from it go back with put(), under each conflict policy, and Celery's own
AsyncResult(id).get() returns them again (tests/backends.py)."""

from __future__ import annotations

import datetime as dt
import importlib
from pathlib import Path
from typing import Any

import pytest
from backends import GROUP, OK, OLD, OLD_TASKS, SECRET, Backend, write_standard

from celery_archive.backends import PutReport, TargetConfig, backend_of, open_target
from celery_archive.errors import ConfigError, ConflictError
from celery_archive.pipeline.run import RunReport, run
from celery_archive.restore.search import find


class Archived:
    """What the module's backend held (as the app saw it) and its records, archived and purged."""

    def __init__(self, seen: dict[str, tuple[str, Any]], records: list[dict[str, Any]]) -> None:
        self.seen, self.records = seen, records


@pytest.fixture(scope="module")
def archived(served: Backend, tmp_path_factory: pytest.TempPathFactory) -> Archived:
    served.reset()
    cutoff = write_standard(served)
    seen = {tid: served.get(tid) for tid in OLD_TASKS}
    sink = tmp_path_factory.mktemp("archive")
    report = run(served.config(sink, older_than="1s"), now=cutoff + dt.timedelta(seconds=1))
    assert isinstance(report, RunReport) and report.deleted == len(OLD), report
    assert served.get("ok-0")[0] == "PENDING"  # purged: the app no longer finds it
    found = find(str(sink), list(OLD))
    assert not found.missing
    return Archived(seen, found.records)


def target_of(b: Backend) -> Any:
    return open_target(TargetConfig(b.url))


def test_put_brings_results_back(backend: Backend, archived: Archived) -> None:
    target = target_of(backend)
    assert target.put(archived.records, "skip") == PutReport(restored=len(OLD))
    target.close()
    for tid in OLD_TASKS:
        assert backend.get(tid) == archived.seen[tid], tid  # AsyncResult(id).get(), as before the archive
    assert backend.get("fail-0")[1] == repr(ValueError("card declined", 7))
    assert backend.group_children(GROUP) == ["ok-0", "ok-1"]


def test_skip_leaves_a_result_that_is_there(backend: Backend, archived: Archived) -> None:
    backend.store("ok-0", "a newer run")  # the id is in use again
    target = target_of(backend)
    assert target.put(archived.records, "skip") == PutReport(restored=len(OLD) - 1, skipped=1)
    assert target.put(archived.records, "skip") == PutReport(skipped=len(OLD))
    target.close()
    assert backend.get("ok-0") == ("SUCCESS", "a newer run")
    assert backend.get("ok-1") == archived.seen["ok-1"]


def test_overwrite_replaces_it(backend: Backend, archived: Archived) -> None:
    backend.store("ok-0", "a newer run")
    target = target_of(backend)
    assert target.put(archived.records, "overwrite") == PutReport(restored=len(OLD), overwritten=1)
    target.close()
    assert backend.get("ok-0") == archived.seen["ok-0"]


def test_fail_refuses_and_writes_nothing(backend: Backend, archived: Archived) -> None:
    backend.store("ok-2", "a newer run")
    target = target_of(backend)
    with pytest.raises(ConflictError, match="nothing was restored"):
        target.put(archived.records, "fail")
    assert backend.held() == {"ok-2"} and backend.get("ok-2") == ("SUCCESS", "a newer run")
    with pytest.raises(ConfigError, match="--on-conflict"):
        target.put(archived.records, "merge")
    assert target.put([r for r in archived.records if r["task_id"] in OK[:2]], "fail") == PutReport(restored=2)
    target.close()
    assert backend.held() == {"ok-0", "ok-1", "ok-2"}


def test_display_url_has_no_password(backend: Backend) -> None:
    url = backend.with_password()
    target = importlib.import_module(f"celery_archive.backends.{backend_of(url)}.target").from_config(TargetConfig(url))
    assert SECRET not in target.display_url
    assert target.display_url.split("://")[0] == backend.url.split("://")[0]
    target.close()


def test_close_lets_go_of_connections(backend: Backend, archived: Archived, tmp_path: Path) -> None:
    before = backend.connections()
    target = target_of(backend)
    target.put(archived.records, "skip")
    target.close()
    assert backend.connections() == before
