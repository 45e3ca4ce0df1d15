"""End to end on real PostgreSQL, MariaDB and SQLite, with results written by Celery's own
DatabaseBackend: what is archived is exactly what was stored, and only that is deleted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import age_rows, celery_app, cli, db_url, table_rows
from helpers import after_extract, archive, read_archive, utc, write_sql_results


class Boom(Exception):
    pass


@pytest.mark.parametrize("serializer", ["json", "pickle"])
@pytest.mark.parametrize("extended", [True, False])
def test_archive_verify_purge(backend_url: str, tmp_path: Path, serializer: str, extended: bool) -> None:
    app = celery_app(backend_url, serializer=serializer, extended=extended)
    kinds = write_sql_results(app)
    app.backend.store_result("recent-0", 42, "SUCCESS")  # stays: newer than the cutoff
    age_rows(backend_url, 40, "task_id <> 'recent-0'")
    age_rows(backend_url, 40, table="celery_tasksetmeta")
    stored = table_rows(backend_url)
    stored_groups = table_rows(backend_url, "celery_tasksetmeta")
    seen_by_celery = {tid: app.AsyncResult(tid) for tid in kinds}
    expected_state = {tid: r.state for tid, r in seen_by_celery.items()}

    report = archive(backend_url, tmp_path / "archive", serializer=serializer)

    old_finished = [t for t, k in kinds.items() if k != "started"]
    assert report.selected == report.archived == report.verified == report.deleted == len(old_finished) + 1
    assert report.skipped_changed == 0
    records = read_archive(tmp_path / "archive")
    assert set(records) == {*old_finished, "group-0"}
    for tid in old_finished:
        rec, row = records[tid], stored[tid]
        assert rec["kind"] == "task" and rec["status"] == expected_state[tid] == row["status"]
        assert rec["raw_result"] == row["result"]  # the exact stored bytes
        assert rec["raw_args"] == row["args"] and rec["raw_kwargs"] == row["kwargs"]
        assert rec["date_done"] == utc(row["date_done"])
        assert str(rec["date"]) == row["date_done"].date().isoformat()  # Hive partition
        assert rec["storage_format"] == "celery-db-5.7"
        if serializer == "pickle" and kinds[tid] == "revoked":
            # a pickled celery.exceptions.TaskRevokedError is not plain data: kept as bytes only
            assert rec["result"] is None
            assert rec["decode_error"] == "result: refused to load celery.exceptions.TaskRevokedError: only plain data types are admitted"
            continue
        assert rec["decode_error"] is None
        assert rec["content_type"] == {"json": "application/json", "pickle": "application/x-python-serialize"}[serializer]
        assert rec["source"] == backend_url.split("@")[-1] or "***" not in rec["source"]
        result = json.loads(rec["result"])
        if kinds[tid] == "success":
            assert result == {"n": int(tid.split("-")[1]), "pair": [1, 2], "at": "2026-03-04T05:06:07", "price": "9.10"}
        elif kinds[tid] == "failure":
            assert result == {"exc_type": "ValueError", "exc_message": ["card declined", int(tid[-1])], "exc_module": "builtins"}
            assert "card declined" in rec["traceback"]
        if extended:
            assert (rec["name"], rec["worker"], rec["retries"], rec["queue"]) == (row["name"], "worker1@host", 2, "billing")
            assert json.loads(rec["args"]) == [1, "two", [3]]
            assert json.loads(rec["kwargs"]) == {"when": "2026-01-02"}
        else:
            assert rec["name"] is None and rec["args"] is None
    group = records["group-0"]
    assert group["kind"] == "group" and group["raw_result"] == stored_groups["group-0"]["result"]
    # only what was archived left the backend
    assert set(table_rows(backend_url)) == {"recent-0", "started-0"}
    assert table_rows(backend_url, "celery_tasksetmeta") == {}
    assert app.AsyncResult("recent-0").get(timeout=5) == 42


def test_changed_after_read_is_not_deleted(backend_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result re-run between extract and purge survives the run (invariant 2)."""
    app = celery_app(backend_url)
    write_sql_results(app)
    age_rows(backend_url, 40)
    after_extract(monkeypatch, lambda: app.backend.store_result("fail-1", "fixed on retry", "SUCCESS"))  # a re-run
    report = archive(backend_url, tmp_path / "archive")
    assert report.skipped_changed == 1
    assert report.deleted == report.verified - 1
    left = table_rows(backend_url)
    assert set(left) == {"fail-1", "started-0"}
    assert left["fail-1"]["status"] == "SUCCESS"
    assert app.AsyncResult("fail-1").get(timeout=5) == "fixed on retry"
    assert read_archive(tmp_path / "archive")["fail-1"]["status"] == "FAILURE"  # the version that was read


def test_row_written_into_the_range_is_not_deleted(backend_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A late write with an old date_done lands between archived rows: it is not verified,
    so the set-wise delete must leave it (the range delete rolls back and deletes exactly)."""
    import sqlalchemy as sa

    app = celery_app(backend_url)
    write_sql_results(app)
    age_rows(backend_url, 40)
    rows = table_rows(backend_url)
    middle = sorted(r["date_done"] for r in rows.values() if r["date_done"])[5]

    def insert_late_row() -> None:
        engine = sa.create_engine(backend_url.removeprefix("db+"))
        t = sa.Table("celery_taskmeta", sa.MetaData(), autoload_with=engine)
        with engine.begin() as conn:
            values: dict[str, Any] = {"task_id": "late-0", "status": "SUCCESS", "result": b"1", "date_done": middle}
            if engine.dialect.supports_sequences:  # Celery's task_id_sequence (PostgreSQL, MariaDB)
                values["id"] = sa.Sequence("task_id_sequence").next_value()
            conn.execute(t.insert().values(**values))
        engine.dispose()

    after_extract(monkeypatch, insert_late_row)
    report = archive(backend_url, tmp_path / "archive")
    assert report.deleted == report.verified and report.skipped_changed == 0
    assert set(table_rows(backend_url)) == {"late-0", "started-0"}
    assert "late-0" not in read_archive(tmp_path / "archive")


def test_rewrite_after_the_purge_checked_the_range_is_never_deleted_unseen(backend_url: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A result rewritten in place (same date_done, status FAILURE -> SUCCESS) by another
    client once the purge has checked the batch's range, before it deletes: the write waits
    for the purge's transaction (the range is locked), so it either lands after the delete
    (and finds nothing) or, had it landed first, its row would have to survive."""
    import threading

    import sqlalchemy as sa

    from celery_archive.backends import PurgeBatch

    app = celery_app(backend_url)
    write_sql_results(app)
    age_rows(backend_url, 40)
    row_id = table_rows(backend_url)["fail-1"]["id"]
    engine = sa.create_engine(backend_url.removeprefix("db+"))
    updated: list[int] = []
    writers: list[threading.Thread] = []
    real_outside = PurgeBatch.outside

    def rewrite() -> None:
        with engine.begin() as conn:
            # by primary key, as Celery's own session writes a result it has read
            updated.append(conn.exec_driver_sql(f"UPDATE celery_taskmeta SET status = 'SUCCESS', result = NULL WHERE id = {row_id}").rowcount)

    def outside_then_rewrite(self: PurgeBatch, got: dict[str, Any]) -> int:
        n = real_outside(self, got)
        if not writers and self.kind == "task":  # the check is done; the DELETE comes next
            writers.append(threading.Thread(target=rewrite))
            writers[0].start()
            writers[0].join(timeout=1.5)  # a write the range's lock lets through lands now
        return n

    monkeypatch.setattr(PurgeBatch, "outside", outside_then_rewrite)
    report = archive(backend_url, tmp_path / "archive")
    writers[0].join(timeout=30)
    engine.dispose()
    left = table_rows(backend_url)
    assert len(updated) == 1, "the rewrite did not finish"
    assert read_archive(tmp_path / "archive")["fail-1"]["status"] == "FAILURE"
    if updated == [1]:  # it landed before the delete: the rewritten row must still be there
        assert "fail-1" in left and left["fail-1"]["status"] == "SUCCESS", "a row changed after the check was deleted"
    assert updated == [0] and "fail-1" not in left  # it waited for the purge, then found nothing
    assert (report.deleted, report.skipped_changed) == (report.verified, 0)


def test_mariadb_checks_the_range_row_by_row_when_its_keys_text_is_cut(request: pytest.FixtureRequest, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Where MariaDB cuts the one text of a batch's keys short (GROUP_CONCAT over
    max_allowed_packet), the locked range is read row by row instead: a result re-run since
    it was read still survives, and everything else goes."""
    from celery_archive.backends.sql import purge

    url = db_url(request, "mysql", tmp_path)
    app = celery_app(url)
    write_sql_results(app)
    age_rows(url, 40)
    monkeypatch.setattr(purge, "_parsed_keys", lambda *_: None)

    def no_exact_delete(*_: Any) -> int:
        raise AssertionError("the locked range's check failed: deleted exactly instead")

    monkeypatch.setattr(purge, "_exact_delete", no_exact_delete)
    after_extract(monkeypatch, lambda: app.backend.store_result("fail-1", "fixed on retry", "SUCCESS"))
    report = archive(url, tmp_path / "archive")
    assert (report.deleted, report.skipped_changed) == (report.verified - 1, 1)
    assert set(table_rows(url)) == {"fail-1", "started-0"}
    assert app.AsyncResult("fail-1").get(timeout=5) == "fixed on retry"


def test_small_pages_files_and_purge_batches_purge_everything(backend_url: str, tmp_path: Path) -> None:
    """Pages that straddle days, files rolled every few rows, purge batches that span files:
    every verified row is deleted, and none is wrongly counted as changed."""
    app = celery_app(backend_url)
    for i in range(90):
        app.backend.store_result(f"s{i:03d}", i, "SUCCESS")
    for n, days in enumerate((35, 36, 37)):
        age_rows(backend_url, days, f"task_id >= 's{n * 30:03d}'")
    report = archive(backend_url, tmp_path / "archive", batch_size=16, max_file_bytes=2048, purge_batch=7)
    assert report.files > 3
    assert (report.selected, report.deleted, report.skipped_changed) == (90, 90, 0)
    assert table_rows(backend_url) == {}


def test_ids_digest_is_kind_colon_id_lines_in_file_order() -> None:
    import hashlib

    import pyarrow as pa

    from celery_archive.formats.entries import ids_digest

    kinds = ["task", "group", "task", "task"]
    ids = ["b-1", "zé", "a-2", "Ä"]
    plain = hashlib.sha256("".join(f"{k}:{t}\n" for k, t in zip(kinds, ids)).encode()).hexdigest()
    assert ids_digest(pa.array(kinds), pa.array(ids)) == plain
    assert ids_digest(pa.chunked_array([kinds[:2], kinds[2:]]), pa.chunked_array([ids[:2], ids[2:]])) == plain
    assert ids_digest(pa.array(kinds).slice(1), pa.array(ids).slice(1)) == hashlib.sha256(
        "".join(f"{k}:{t}\n" for k, t in zip(kinds[1:], ids[1:])).encode()).hexdigest()
    assert ids_digest(pa.array(kinds[::-1]), pa.array(ids[::-1])) != plain  # order counts


def test_no_transaction_is_left_open_on_celerys_tables(pg_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a run works, it holds no lock on the backend between its statements: a worker's
    ALTER TABLE (Celery 5.7 migrates its tables itself) must not wait for the archiver."""
    import sqlalchemy as sa

    app = celery_app(pg_backend)
    for i in range(30):
        app.backend.store_result(f"l{i}", i, "SUCCESS")
    age_rows(pg_backend, 40)
    engine = sa.create_engine(pg_backend.removeprefix("db+"))
    seen: list[list[Any]] = []

    def look() -> None:
        with engine.connect() as c:
            seen.append(c.exec_driver_sql(
                "SELECT state, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'").all())
            c.exec_driver_sql("SET lock_timeout = '2s'")
            c.exec_driver_sql("ALTER TABLE celery_taskmeta ADD COLUMN IF NOT EXISTS probe integer")
            c.exec_driver_sql("ALTER TABLE celery_taskmeta DROP COLUMN probe")
            c.commit()

    after_extract(monkeypatch, look)
    report = archive(pg_backend, tmp_path / "archive", batch_size=7)
    engine.dispose()
    assert seen == [[]]
    assert report.deleted == 30


def test_dry_run_counts_tasks_and_groups(backend_url: str) -> None:
    """On every database, groups included (PostgreSQL refuses a NULL constant in GROUP BY)."""
    app = celery_app(backend_url)
    write_sql_results(app)
    age_rows(backend_url, 40)
    age_rows(backend_url, 40, table="celery_tasksetmeta")
    proc = cli("run", "--source", backend_url, "--sink", "/nonexistent/never-written", "--older-than", "30d", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["by_status"] == {"SUCCESS": 25, "FAILURE": 3, "REVOKED": 1, "(group)": 1}
    assert plan["by_name"]["shop.checkout"] == 25
