"""The command line as a user meets it: README examples, --json, help, exit codes, messages."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import MYSQL_ADMIN, ROOT, age_rows, celery_app, cli, table_rows
from helpers import IMPORTS_PROBE

from celery_archive.cli import main

README = (ROOT / "README.md").read_text()
COMMANDS = sorted(main.commands)


def readme_examples(cluster: bool = False) -> list[str]:
    """The README's console examples; those on a Redis Cluster (``+cluster://``) only with
    ``cluster`` (tests/test_redis_cluster.py runs them on the test cluster's ports)."""
    blocks = re.findall(r"```console\n(.*?)```", README, re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("celery-archive ")]
    return [line for line in lines if ("+cluster://" in line) == cluster]


def test_every_command_has_help_and_a_readme_example() -> None:
    examples = readme_examples() + readme_examples(cluster=True)
    for name in COMMANDS:
        out = cli(name, "--help")
        assert out.returncode == 0 and "Usage:" in out.stdout and len(out.stdout) > 200
        assert any(e.startswith(f"celery-archive {name}") for e in examples), f"no README example for {name}"
        assert f"### {name}" in README


def test_readme_examples_run_as_written(tmp_path: Path, s3_endpoint: str) -> None:
    """The README's console examples, in order, in a fresh directory after the demo (the S3
    examples on moto's server, with the buckets localstack/init-buckets.sh makes; the
    django-celery-results ones on a Django project's SQLite database)."""
    import boto3
    from test_django_results import django

    db = f"sqlite:///{tmp_path / 'django.db'}"
    for step in (["migrate"], ["write"], ["age", "40"]):
        django(db, *step)
    (tmp_path / "archive.toml").write_text(re.search(r"```toml\n(.*?)```", README, re.S).group(1))  # type: ignore[union-attr]

    s3 = boto3.client("s3")
    for bucket, lock in (("celery-archive", False), ("celery-archive-locked", True)):
        try:
            s3.create_bucket(Bucket=bucket, **({"ObjectLockEnabledForBucket": True} if lock else {}))
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    for line in ["celery-archive demo", *readme_examples()]:
        out = cli(*shlex.split(line)[1:], cwd=tmp_path)
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
        if "--json" in line:
            lines = out.stdout.strip().splitlines()
            if line.split()[1] == "query":  # one object per result row
                assert lines and all(isinstance(json.loads(x), dict) for x in lines)
            elif line.split()[1] == "audit":  # one object per event
                assert lines and all(json.loads(x)["command"] == "audit" for x in lines)
            else:
                command = {"rules": "rules check"}.get(line.split()[1], line.split()[1])
                assert len(lines) == 1 and json.loads(lines[0])["command"] == command


def test_readme_first_command_installs_and_runs_the_demo() -> None:
    first = re.search(r"```console\n(.*?)\n```", README, re.S)
    assert first and first.group(1).startswith("python3 -m venv .venv") and first.group(1).endswith("celery-archive demo")
    assert "bash scripts/test.sh" in README
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_run_json_has_the_promised_fields(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(10):
        app.backend.store_result(f"j{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40)
    out = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--json")
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    report = json.loads(line)
    assert {k: report[k] for k in ("selected", "archived", "verified", "deleted")} == {"selected": 10, "archived": 10, "verified": 10, "deleted": 10}
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", report["run_id"])
    for cmd in (["verify", "--sink", str(tmp_path / "a")], ["runs", "--sink", str(tmp_path / "a")]):
        (one,) = cli(*cmd, "--json").stdout.strip().splitlines()
        assert json.loads(one)["command"] == cmd[0]


def test_dry_run_counts_and_changes_nothing(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(12):
        app.backend.store_result(f"d{i}", "x" * 100, "SUCCESS" if i % 4 else "FAILURE")
    age_rows(sqlite_url, 40)
    before = table_rows(sqlite_url)
    out = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dry_run"] is True and report["selected"] == 12
    assert report["by_status"] == {"SUCCESS": 9, "FAILURE": 3}
    assert sum(report["by_day"].values()) == 12 and report["bytes"] > 12 * 100
    assert table_rows(sqlite_url) == before
    assert not (tmp_path / "a").exists()
    text = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--dry-run")
    assert "would be archived" in text.stdout and "nothing was changed" in text.stdout


@pytest.mark.parametrize("args,code,message", [
    (["--source", "db+postgresql+psycopg://postgres@127.0.0.1:1/nothing"], 1, "connecting to db+postgresql+psycopg://postgres@127.0.0.1:1/nothing failed"),
    (["--source", "postgresql://postgres@127.0.0.1/x"], 2, "not a Celery database backend URL"),
    (["--source", "db+nosuchdb://h/x"], 2, "no database driver"),
    (["--source", "db+sqlite:///{tmp}/r.db", "--older-than", "thirty days"], 2, "invalid duration 'thirty days'"),
    (["--source", "db+sqlite:///{tmp}/r.db", "--sink", "gs://bucket/x"], 2, "unsupported sink scheme 'gs'"),
    (["--source", "db+sqlite:///{tmp}/missing.db"], 2, "no SQLite database file at"),
])
def test_bad_input_gets_a_clear_message(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    full = {"--sink": str(tmp_path / "a"), "--older-than": "30d"}
    given = dict(zip(args[::2], args[1::2]))
    argv = [x.replace("{tmp}", str(tmp_path)) for kv in {**full, **given}.items() for x in kv]
    if "r.db" in " ".join(argv):
        celery_app(f"db+sqlite:///{tmp_path}/r.db")  # a valid backend, so only the bad option is wrong
    out = cli("run", *argv)
    assert out.returncode == code, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not any((tmp_path / "a").rglob("*.parquet"))
    assert not (tmp_path / "missing.db").exists()


def test_a_database_without_celerys_tables(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sa.create_engine(f"sqlite:///{db}").connect().close()
    out = cli("run", "--source", f"db+sqlite:///{db}", "--sink", str(tmp_path / "a"), "--older-than", "1d")
    assert out.returncode == 1 and "table celery_taskmeta not found" in out.stderr and "--task-table" in out.stderr


def test_a_table_that_is_not_celerys(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE celery_taskmeta (id INTEGER PRIMARY KEY, payload TEXT)")
    out = cli("run", "--source", f"db+sqlite:///{db}", "--sink", str(tmp_path / "a"), "--older-than", "1d")
    assert out.returncode == 1
    assert "not a Celery result table: it has no column(s) date_done, result, status, task_id" in out.stderr


def test_a_wrong_password_is_never_printed(tmp_path: Path) -> None:
    secret = "Sup3r-s3cret-pw"
    url = sa.make_url(MYSQL_ADMIN).set(password=secret, database="test").render_as_string(hide_password=False)
    for extra in ([], ["--json"]):
        out = cli("run", "--source", f"db+{url}", "--sink", str(tmp_path / "a"), "--older-than", "1d", *extra)
        assert out.returncode == 1
        assert secret not in out.stdout + out.stderr
        assert "Access denied" in out.stdout + out.stderr and "***" in out.stdout + out.stderr


def test_full_disk_fails_before_any_delete(sqlite_url: str, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs to fill: {mounted.stderr}"
    try:
        app = celery_app(sqlite_url)
        for i in range(300):
            app.backend.store_result(f"f{i}", {"blob": f"{i}-" * 200}, "SUCCESS")
        age_rows(sqlite_url, 40)
        before = table_rows(sqlite_url)
        out = cli("run", "--source", sqlite_url, "--sink", str(small / "archive"), "--older-than", "30d",
                  "--format", "jsonl", "--max-file-size", "16KiB")
        assert out.returncode == 1
        assert "no space left" in out.stderr
        assert table_rows(sqlite_url) == before
        assert not (small / "archive" / "manifests").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)
    ok = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "big"), "--older-than", "30d", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["deleted"] == 300


def test_run_ids_sort_in_the_order_runs_started(sqlite_url: str, tmp_path: Path) -> None:
    """Runs in the same second still sort in order: "the latest run" (restore, ddl) is the last one."""
    import datetime as dt

    from celery_archive.archive.manifest import new_run_id

    second = dt.datetime(2026, 11, 25, 3, 30, 0)
    within = [new_run_id(second.replace(microsecond=us)) for us in (0, 9, 10, 65_535, 65_536, 999_999)]
    assert within == sorted(within) and len(set(within)) == 6
    celery_app(sqlite_url).backend.store_result("x", 1, "SUCCESS")
    ids = []
    for _ in range(4):
        out = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--json")
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout)["run_id"])
    assert ids == sorted(ids) and len(set(ids)) == 4


def test_every_command_is_where_the_console_script_looks_for_it() -> None:
    """The console script imports a command's module only when that command runs: the map
    it looks in names every command, and the module that registers it."""
    from celery_archive.cli.base import COMMAND_MODULES

    assert set(COMMANDS) == set(COMMAND_MODULES)
    for name in COMMANDS:
        assert main.commands[name].callback.__module__ == COMMAND_MODULES[name], name  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_restore_by_id_loads_only_what_a_lookup_needs(tmp_path: Path, fmt: str) -> None:
    """``celery-archive restore ID`` starts fast: no other command's code, no backend driver,
    no Celery, no boto3 for a local archive, no pyarrow.compute or pyarrow.dataset."""
    import shutil
    import sys

    import pyarrow.parquet as pq

    sink = tmp_path / "archive"
    shutil.copytree(ROOT / "tests" / "fixtures" / "archive-v1", sink)
    entries = pq.read_table(sorted((sink / "index" / "log").glob("*.parquet"))[0 if fmt == "jsonl" else 1]).to_pylist()
    entry = next(e for e in entries if e["key"].endswith(".parquet" if fmt == "parquet" else ".jsonl.zst"))
    proc = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, "restore", entry["task_id"], "--sink", str(sink), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["task_id"] == entry["task_id"]
    modules = set(json.loads(proc.stderr.splitlines()[-1]))
    unwanted = {"celery_archive.cli.run", "celery_archive.cli.monitor", "celery_archive.cli.query", "celery_archive.cli.archive",
                "celery_archive.web.command", "celery_archive.pipeline.run", "celery_archive.backends.redis.source",
                "sqlalchemy", "celery", "redis", "boto3", "botocore", "pyarrow.compute", "pyarrow.dataset", "rich"}
    assert modules & unwanted == set()
