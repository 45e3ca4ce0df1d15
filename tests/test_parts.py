"""A run in parts (--commit-every): every part is committed as a run of its own and purged while
the next one is taken; on PostgreSQL and MariaDB (not Redis), with results written by Celery's own
backends. Nothing is lost or archived twice, also when a part's purge fails half-way."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from conftest import celery_app, cli, db_url
from helpers import REDIS_URL, archive, data_files, keys, redis_app
from kill_loop import add_results, in_source

from celery_archive.archive.layout import run_id_of

N = 2_500


def _archived(sink: Path) -> Counter[str]:
    """How often each task id is in the archive's data files; each record's run id checked
    against the file's (a part's records name that part)."""
    seen: Counter[str] = Counter()
    for f in data_files(sink):
        t = pq.read_table(f, columns=["task_id", "run_id"])
        assert set(t["run_id"].to_pylist()) == {run_id_of(f.name)}, f
        seen.update(t["task_id"].to_pylist())
    return seen


def _run(url: str, sink: Path, *more: str) -> dict[str, object]:
    out = cli("run", "--source", url, "--sink", str(sink), "--older-than", "30d", "--batch-size", "250",
              "--commit-every", "1000", "--json", *more)
    assert out.returncode == 0, out.stderr
    report: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_run_in_parts_commits_each_part_as_a_run_and_loses_nothing(kind: str, request: pytest.FixtureRequest,
                                                                     tmp_path: Path) -> None:
    url = db_url(request, kind, tmp_path)
    ids = add_results(url, 0, N)
    sink = tmp_path / "archive"

    report = _run(url, sink)

    parts = report["parts"]
    assert isinstance(parts, list) and len(parts) == 3 and parts[0] == report["run_id"]  # 1,000 + 1,000 + 500
    assert (report["selected"], report["archived"], report["verified"], report["deleted"]) == (N, N, N, N)
    assert in_source(url) == set()
    assert _archived(sink) == Counter({tid: 1 for tid in ids})
    listed = cli("runs", "--sink", str(sink), "--json")
    assert listed.returncode == 0, listed.stderr
    runs = {r["run_id"]: r for r in json.loads(listed.stdout)["runs"]}
    assert set(parts) <= set(runs)
    assert [(runs[p]["rows"], runs[p]["state"], runs[p]["deleted"]) for p in parts] == [(1000, "purged", 1000)] * 2 + [(500, "purged", 500)]
    verified = cli("verify", "--sink", str(sink))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # a result of the last part comes back for Celery
    back = cli("restore", "k002400", "--sink", str(sink), "--into", url)
    assert back.returncode == 0, back.stderr
    assert celery_app(url).AsyncResult("k002400").get(timeout=5) == {"i": "k002400", "pad": "x" * 100}


def test_a_part_whose_purge_fails_stops_the_run_and_the_next_run_finishes_it(pg_backend: str, tmp_path: Path) -> None:
    """The database refuses every delete (a trigger): the first part's purge fails while the
    second is taken; nothing leaves the table. Once deletes work again the next run purges
    the committed parts and takes the rest: each result archived once, none left."""
    url, sink = pg_backend, tmp_path / "archive"
    ids = add_results(url, 0, N)
    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$ BEGIN RAISE EXCEPTION 'deletes are refused here'; END $$")
        conn.exec_driver_sql("CREATE TRIGGER no_delete BEFORE DELETE ON celery_taskmeta FOR EACH ROW EXECUTE FUNCTION no_delete()")

    failed = cli("run", "--source", url, "--sink", str(sink), "--older-than", "30d", "--batch-size", "250",
                 "--commit-every", "1000", "--json")

    error = json.loads(failed.stdout.strip().splitlines()[-1])
    assert failed.returncode == 1 and error["error_type"] == "SourceError", failed.stdout + failed.stderr
    assert "deletes are refused here" in error["error"]
    assert in_source(url) == ids  # nothing deleted
    assert set(_archived(sink)) <= ids
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER no_delete ON celery_taskmeta")
    engine.dispose()

    report = _run(url, sink)

    assert report["resumed"], report  # the committed parts, purged now
    assert in_source(url) == set()
    assert _archived(sink) == Counter({tid: 1 for tid in ids})
    assert cli("verify", "--sink", str(sink)).returncode == 0


def test_a_redis_run_is_not_split_into_parts(prefix: str, tmp_path: Path) -> None:
    """Deletes while SCAN goes on shrink Redis's table, and SCAN then returns keys it returned
    before: a later part would archive them again. A Redis run commits once, after its SCAN."""
    app = redis_app(prefix)
    ids = {f"r{i:05d}" for i in range(N)}
    for tid in sorted(ids):
        app.backend.store_result(tid, {"i": tid}, "SUCCESS")
    written = dt.datetime.now(dt.timezone.utc)  # every result above is older than this instant
    app.backend.store_result("young-0", 1, "SUCCESS")
    sink = tmp_path / "archive"

    report = archive(REDIS_URL, sink, older_than="1s", now=written + dt.timedelta(seconds=1), key_prefix=prefix,
                     batch_size=250, commit_every=1000)

    assert report.parts == [] and report.deleted == report.archived == N, report
    assert set(keys(prefix)) == {f"{prefix}celery-task-meta-young-0"}
    assert _archived(sink) == Counter({tid: 1 for tid in ids})
    assert app.AsyncResult("young-0").get(timeout=5) == 1
