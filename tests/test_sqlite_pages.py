"""SQLite pages read as Arrow columns (backends/sql/sqlite_arrow.py) give the archive the
DB-API driver gives, and a row holding a value of a type Celery never writes there (SQLite
stores anything anywhere) is left in the backend, counted and named, while the rest goes on."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from conftest import age_rows, celery_app, cli
from helpers import counted_pages

from celery_archive.backends.sql import sqlite_arrow
from celery_archive.backends.sql.source import SqlSource
from celery_archive.config import RunConfig
from celery_archive.pipeline.run import run

# (task id, SQL that stores a value of another type in its row, whether the run must leave it)
ODD = [
    ("odd-args-int", "args = 42", True),  # a number in a BLOB column
    ("odd-name-blob", "name = x'ff00'", True),  # bytes that are no text in a text column
    ("odd-retries-big", "retries = 99999999999", True),  # beyond the retries column's int32
    ("odd-retries-text", "retries = 'x'", True),
    ("odd-result-text", "result = '{\"v\": 1}'", True),  # text in a BLOB column (Celery writes bytes)
    ("odd-traceback-blob", "traceback = x'41'", True),  # bytes in a text column, even bytes that are text
    ("odd-worker-real", "worker = 3.5", False),  # a text column's affinity stores the number as text: '3.5'
    ("odd-name-not-utf8", "name = CAST(x'ff' AS TEXT)", True),  # text that is not UTF-8: sqlite3 refuses it
]
# a date_done SQLite cannot read beside text that is not UTF-8: the dry run's counts failed on it (KeyError)
NO_DATE_NOT_UTF8 = "date_done = '2019-13-01 00:00:00', traceback = CAST(x'ff41' AS TEXT)"


def _backend(tmp_path: Path, n: int) -> tuple[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "results.db"
    url = f"db+sqlite:///{db}"
    app = celery_app(url)
    for i in range(n):
        app.backend.store_result(f"ok-{i:05d}", {"i": i, "pad": "x" * (i % 50)}, "SUCCESS")
    for tid, _sql, _left in ODD:
        app.backend.store_result(tid, {"odd": tid}, "SUCCESS")
    age_rows(url, 40)
    with sqlite3.connect(db) as c:
        # args: NULL on the first pages (no request), bytes on the later ones, as Celery writes them
        c.execute("UPDATE celery_taskmeta SET args = CAST('[1, \"x\"]' AS BLOB) WHERE task_id >= 'ok-01500'")
        for tid, sql, _left in ODD:
            c.execute(f"UPDATE celery_taskmeta SET {sql} WHERE task_id = ?", (tid,))
    return url, db


def _records(sink: Path) -> pa.Table:
    files = [str(p) for p in sorted((sink / "data").rglob("*.parquet"))]
    table = ds.dataset(files, format="parquet", partitioning="hive", partition_base_dir=str(sink / "data")).to_table()
    return table.drop_columns(["run_id", "archived_at", "source"]).sort_by("task_id")


def test_arrow_pages_archive_what_the_driver_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = counted_pages(monkeypatch, sqlite_arrow)
    now = dt.datetime.now(dt.timezone.utc)
    reports = []
    _url, made = _backend(tmp_path / "made", 2000)
    for name in ("arrow", "driver"):
        (tmp_path / name).mkdir()
        url = f"db+sqlite:///{shutil.copy(made, tmp_path / name / 'results.db')}"  # the same rows for both
        if name == "driver":
            monkeypatch.setattr(SqlSource, "arrow_pages", False)
        reports.append(run(RunConfig(source=url, sink=str(tmp_path / name / "a"), older_than=dt.timedelta(days=30),
                                     batch_size=500), now=now))
    assert pages["arrow"] >= 4 and pages["driver"] >= 1  # clean pages by Arrow; those holding odd values by the driver
    arrow = reports[0]
    left = sum(1 for *_, gone in ODD if gone)
    for r in reports:
        assert r.archived == r.verified == r.deleted == 2000 + len(ODD) - left  # type: ignore[union-attr]
        assert r.source_counts == {"malformed": left}  # type: ignore[union-attr]
    a, b = _records(tmp_path / "arrow" / "a"), _records(tmp_path / "driver" / "a")
    assert a.num_rows == b.num_rows == arrow.archived  # type: ignore[union-attr]
    for column in a.column_names:
        assert a[column].equals(b[column]), column
    by_id = {r["task_id"]: r for r in a.to_pylist()}
    assert by_id["odd-worker-real"]["worker"] == "3.5"
    assert by_id["ok-00000"]["raw_args"] is None and by_id["ok-01600"]["raw_args"] == b'[1, "x"]'


def test_rows_of_the_wrong_type_are_named_and_stay(tmp_path: Path) -> None:
    url, db = _backend(tmp_path, 200)
    with sqlite3.connect(db) as c:
        c.execute(f"UPDATE celery_taskmeta SET {NO_DATE_NOT_UTF8} WHERE task_id = 'ok-00005'")
    dry = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--dry-run", "--json").stdout)
    assert plan["selected"] == 200 + len(ODD) - 8 and plan["source_counts"] == {"malformed": 7, "bad_date_done": 1}  # as the run
    assert "left alone 7 record(s) that have a field of a type Celery never writes" in dry.stdout, dry.stdout
    out = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--batch-size", "50")
    assert out.returncode == 0, out.stderr
    assert "left alone 7 record(s) that have a field of a type Celery never writes" in out.stdout, out.stdout
    assert "args is int 42" in out.stdout and "name is bytes" in out.stdout
    with sqlite3.connect(db) as c:
        kept = dict(c.execute("SELECT task_id, typeof(args) || '/' || typeof(name) || '/' || quote(retries) FROM celery_taskmeta"))
    assert set(kept) == {tid for tid, _sql, gone in ODD if gone} | {"ok-00005"}  # exactly these stay, as they were
    assert kept["odd-args-int"].startswith("integer/") and kept["odd-retries-big"].endswith("/99999999999")
    again = json.loads(cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--json").stdout)
    assert again["ok"] and again["archived"] == 0 and again["source_counts"] == {"malformed": 7, "bad_date_done": 1}
    plan = json.loads(cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--dry-run", "--json").stdout)
    assert plan["selected"] == 0 and plan["source_counts"] == {"malformed": 7, "bad_date_done": 1}
    assert len(plan["source_examples"]["malformed"]) == 5


def test_a_date_done_that_is_no_text_is_left_and_a_file_uri_name_is_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """date_done has NUMERIC affinity in Celery's SQLite table: '1' is stored as the number 1, which
    is no date (julianday() would read a Julian day); and a relative name starting ``file:`` is the
    file of that name for SQLAlchemy, so it must be for the Arrow reader too (ADBC reads it as a URI:
    it read ./z.db and the purge deleted from ./file:z.db, rows archived from neither)."""
    monkeypatch.chdir(tmp_path)
    _url, made = _backend(tmp_path / "made", 300)
    with sqlite3.connect(made) as c:
        c.execute("UPDATE celery_taskmeta SET date_done = '1' WHERE task_id = 'ok-00001'")
        c.execute("UPDATE celery_taskmeta SET date_done = 2461000.5 WHERE task_id = 'ok-00002'")
        c.execute("UPDATE celery_taskmeta SET date_done = x'00' WHERE task_id = 'ok-00003'")
    shutil.copy(made, tmp_path / "file:z.db")
    shutil.copy(made, tmp_path / "z.db")
    with sqlite3.connect(tmp_path / "z.db") as c:  # another file by the name ADBC would give it
        c.execute("UPDATE celery_taskmeta SET result = CAST('not this file' AS BLOB)")
    url = "db+sqlite:///file:z.db"
    for args in (("--dry-run",), ()):
        out = cli("run", "--source", url, "--sink", "a", "--older-than", "30d", "--batch-size", "100", "--json", *args)
        assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    gone = sum(1 for *_, left in ODD if left)
    # the number and the REAL are older than the cutoff as julianday() reads them, and then no date; the
    # bytes are nothing SQLite dates: not selected at all. All three stay.
    assert report["source_counts"] == {"bad_date_done": 2, "malformed": gone} and report["deleted"] == 300 + len(ODD) - 3 - gone
    assert all(r["raw_result"] != b"not this file" for r in _records(tmp_path / "a").to_pylist())
    with sqlite3.connect(tmp_path / "file:z.db") as c:
        left = {t for (t,) in c.execute("SELECT task_id FROM celery_taskmeta")}
    assert {"ok-00001", "ok-00002", "ok-00003"} <= left and len(left) == 3 + gone
    with sqlite3.connect(tmp_path / "z.db") as c:
        assert c.execute("SELECT count(*) FROM celery_taskmeta").fetchone()[0] == 300 + len(ODD)  # untouched
    held = json.loads(cli("stats", "--source", url, "--json").stdout)
    assert held["results"] == 3 + gone and held["by_age"].get("(no date)") == 3


def test_a_result_nested_as_deep_as_celery_writes_is_archived(tmp_path: Path) -> None:
    """A JSON result 985 levels deep (Celery's json writes it) is past msgspec's nesting: its page
    is decoded value by value instead of failing the run."""
    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    app = celery_app(url)
    for i in range(6):
        app.backend.store_result(f"ok-{i}", i, "SUCCESS")
    age_rows(url, 40)
    nested = b"[" * 985 + b"]" * 985  # as Celery's json writes a list 985 deep (this process's stack is too deep to)
    with sqlite3.connect(tmp_path / "results.db") as c:
        c.execute("UPDATE celery_taskmeta SET result = ? WHERE task_id = 'ok-5'", (nested,))
    out = cli("run", "--source", url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["deleted"] == 6
    by_id = {r["task_id"]: r for r in _records(tmp_path / "a").to_pylist()}
    assert by_id["ok-5"]["raw_result"] == nested and by_id["ok-5"]["result"].replace(" ", "").encode() == nested


def test_a_celery_worker_reads_sqlite_through_sqlite3_only() -> None:
    """ADBC's driver links its own SQLite: closing its connection would drop the POSIX locks the
    worker's own result backend holds on the same file. A process that loads the tasks (a worker)
    reads pages through sqlite3; the CLI's own processes through ADBC."""
    import subprocess
    import sys

    code = ("from celery_archive.backends.sql import sqlite_arrow as s; a = s.available(); "
            "import celery_archive.tasks; print(a, s.available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "False"], out.stderr
