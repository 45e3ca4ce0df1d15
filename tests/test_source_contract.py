"""The Source contract (celery_archive/backends/__init__.py), checked on every result backend:
Celery's database backend on SQLite, PostgreSQL and MariaDB, django-celery-results on the same
three, and Redis; results written by each backend's own code (tests/backends.py)."""

from __future__ import annotations

import datetime as dt
import gc
import importlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from backends import GROUP, OK, OLD, OLD_TASKS, SECRET, STATES, UNFINISHED, YOUNG, Backend, value, write_standard
from helpers import utc

from celery_archive import RunConfig, parse_duration
from celery_archive.backends import PurgeBatch, Source, Tally, backend_of, open_source
from celery_archive.errors import ConfigError, SourceError


def extract(source: Source, cutoff: dt.datetime, batch_size: int = 100) -> list[pa.Table]:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # the run's clock, as run() gives it
    return list(source.extract(cutoff, batch_size, "run-contract", now))


def records(tables: list[pa.Table]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in tables:
        for r in t.to_pylist():
            assert r["task_id"] not in out, f"{r['task_id']} extracted twice"
            out[r["task_id"]] = r
    return out


@pytest.fixture
def written(backend: Backend) -> tuple[Backend, dt.datetime]:
    return backend, write_standard(backend)


def test_open_says_what_is_wrong_and_keeps_the_password(backend: Backend) -> None:
    cfg = RunConfig(source=backend.unreachable(), sink="unused", older_than=parse_duration("1d"))
    with pytest.raises((SourceError, ConfigError)) as err:
        open_source(cfg)
    assert SECRET not in str(err.value) and "Traceback" not in str(err.value)
    assert "127.0.0.1:1" in str(err.value) or "no-such-dir" in str(err.value)  # names where it looked
    cfg, named = backend.no_results_here()
    with pytest.raises(SourceError, match=named):
        open_source(cfg)


def test_extract_takes_only_finished_results_older_than_the_cutoff(written: tuple[Backend, dt.datetime]) -> None:
    b, cutoff = written
    before = b.snapshot()
    source = open_source(b.config())
    tables = extract(source, cutoff, batch_size=2)
    got = records(tables)
    assert set(got) == set(OLD)  # not the unfinished one, not the young one
    assert all(t.num_rows <= 2 for t in tables) and len(tables) >= 3
    assert {t: r["status"] for t, r in got.items() if r["kind"] == "task"} == STATES
    assert got[GROUP]["kind"] == "group"
    assert all(utc(r["date_done"]) < utc(cutoff) for r in got.values())
    for tid in OK:
        assert json.loads(got[tid]["result"]) == value(tid)
        assert got[tid]["name"] == "shop.checkout"
    assert json.loads(got["fail-0"]["result"])["exc_type"] == "ValueError"
    assert set(source.purge_columns) <= set(tables[0].column_names)
    if not b.kind.startswith("redis"):  # SQL pages through (date_done, id): oldest first, per kind
        for kind in ("task", "group"):
            dates = [r["date_done"] for r in got.values() if r["kind"] == kind]
            assert dates == sorted(dates)
    source.close()
    assert b.snapshot() == before  # extract never changes the backend


def test_stats_count_what_extract_would_take(written: tuple[Backend, dt.datetime]) -> None:
    b, cutoff = written
    before = b.snapshot()
    source = open_source(b.config())
    taken = Tally.of(source.stats(cutoff))
    assert taken.results == len(OLD) and taken.bytes > 0
    assert taken.by_status == {"SUCCESS": 3, "FAILURE": 1, "REVOKED": 1, "(group)": 1}
    assert taken.by_kind == {"task": len(OLD_TASKS), "group": 1} and taken.by_name["shop.checkout"] == 3
    everything = Tally.of(source.stats(cutoff, everything=True))
    assert everything.by_status["SUCCESS"] == 4  # and the young one
    # the unfinished result: in the rows where the backend can date it (SQL), else counted (Redis:
    # no date_done until it finishes)
    if b.kind.startswith("redis"):
        assert everything.results == len(OLD) + 1 and source.counts["unfinished"] >= 1
    else:
        assert everything.results == len(OLD) + 2 and everything.by_status["STARTED"] == 1
    source.close()
    assert b.snapshot() == before


def test_newest_finished_result(written: tuple[Backend, dt.datetime]) -> None:
    b, cutoff = written
    source = open_source(b.config())
    old = source.newest(cutoff)
    assert old is not None
    tid, stored, instant = old
    assert tid in OLD_TASKS and stored and utc(instant) < utc(cutoff)
    newest = source.newest(None)
    assert newest is not None and newest[0] == YOUNG and utc(newest[2]) > utc(cutoff)
    source.close()


def batches(source: Source, tables: list[pa.Table]) -> list[PurgeBatch]:
    table = pa.concat_tables(tables)
    out = []
    for kind in ("task", "group"):
        part = table.filter(pc.equal(table["kind"], kind)).select(list(source.purge_columns))
        if part.num_rows:
            out.append(PurgeBatch.of(kind, [part]))
    return out


def test_purge_deletes_only_what_is_unchanged(written: tuple[Backend, dt.datetime]) -> None:
    b, cutoff = written
    source = open_source(b.config())
    task_batch, group_batch = batches(source, extract(source, cutoff))
    b.store("fail-0", "fixed on retry")  # the task ran again after it was read
    b.forget("ok-1")  # and another result is gone
    assert source.purge(task_batch) == (3, 2)  # ok-0, ok-2, revoked-0; not fail-0 nor ok-1
    assert source.purge(group_batch) == (1, 0)
    assert b.held() == {"fail-0", UNFINISHED, YOUNG}
    assert b.get("fail-0") == ("SUCCESS", "fixed on retry")
    assert source.purge(task_batch) == (0, 5)  # nothing of it is there as it was read
    source.close()


def test_what_a_run_leaves_alone_is_counted_and_named(written: tuple[Backend, dt.datetime]) -> None:
    b, cutoff = written
    odd = b.odd()
    source = open_source(b.config())
    got = records(extract(source, cutoff))
    assert set(got) == set(OLD)
    if odd is None:  # django-celery-results' columns admit nothing odd a run would see
        assert not any(source.counts.values()) and not source.examples
    else:
        reason, example = odd
        assert source.counts[reason] == 1
        assert any(example in e for e in source.examples.get(reason, [])), dict(source.examples)
    source.close()


def test_describe_and_display_url(backend: Backend) -> None:
    source = open_source(backend.config())
    where = source.describe()
    assert where and all(isinstance(k, str) and isinstance(v, str) for k, v in where.items())
    assert any(backend.where in v for v in where.values()), where
    assert isinstance(source.describe_dates(), dict) and set(source.describe_dates()) <= {"task", "group"}
    assert isinstance(source.warnings, list)
    assert source.display_url.split("://")[0] == backend.url.split("://")[0]
    source.close()
    url = backend.with_password()
    cfg = RunConfig(source=url, sink="unused", older_than=parse_duration("1d"))
    shown = importlib.import_module(f"celery_archive.backends.{backend_of(url)}.source").from_config(cfg)
    assert SECRET not in shown.display_url and ("127.0.0.1" in shown.display_url or "sqlite" in shown.display_url)
    shown.close()


def test_close_lets_go_of_connections(written: tuple[Backend, dt.datetime]) -> None:
    b, cutoff = written
    gc.collect()  # clients earlier tests let go of, which would close theirs while this one counts (CI)
    before = b.connections()
    source = open_source(b.config())
    extract(source, cutoff)
    source.stats(cutoff)
    source.close()
    assert b.connections() == before
