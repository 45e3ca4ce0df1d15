"""Encrypted archives (sink option encrypt=): every data file under its own data key, kept
wrapped under keys/; run, verify and restore through the same sink URL; what the archive holds
in clear (manifests, index, keys) names ids and places, never a result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, age_rows, celery_app, cli
from helpers import archive, write_sql_results

SECRET_TEXTS = [b"shop.checkout", b"card declined", b"worker1@host", b"billing"]


def master_key(tmp_path: Path, name: str = "master.key") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(32))
    return path


def archived(tmp_path: Path, fmt: str = "parquet", compression: str | None = None) -> tuple[str, str, Path]:
    """(source URL, sink URL, archive dir) after one encrypted run of every kind of result."""
    src = f"sqlite:///{tmp_path / 'results.db'}"
    url = f"db+{src}"
    app = celery_app(url)
    write_sql_results(app)
    age_rows(url, 40)
    age_rows(url, 40, table="celery_tasksetmeta")
    root = tmp_path / "archive"
    sink = f"file://{root}?encrypt=keyfile:{master_key(tmp_path)}"
    report = archive(url, sink, format=fmt, compression=compression)  # type: ignore[arg-type]
    assert report.deleted == report.archived > 25
    return url, sink, root


def stored(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("fmt", "compression"), [("parquet", None), ("jsonl", None), ("jsonl", "zstd")])
def test_encrypted_run_verify_restore(tmp_path: Path, fmt: str, compression: str | None) -> None:
    url, sink, root = archived(tmp_path, fmt, compression)
    files = stored(root)
    data = {k: v for k, v in files.items() if k.startswith("data/")}
    assert data
    for key, body in files.items():  # no result content in clear anywhere in the archive
        assert not [t for t in SECRET_TEXTS if t in body], key
    for key, body in data.items():
        assert body.endswith(b"PARE") if fmt == "parquet" else body.startswith(b"CAENC1\n"), key
        assert f"keys/{key}.json" in files  # its own wrapped data key
    wrapped = {json.loads(files[f"keys/{k}.json"])["wrapped"] for k in data}
    assert len(wrapped) == len(data)
    manifest = json.loads(next(v for k, v in files.items() if k.startswith("manifests/")))
    assert {f["encryption_key"] for f in manifest["files"]} == {f"keys/{k}.json" for k in data}

    proc = cli("verify", "--sink", sink, "--json")
    assert proc.returncode == 0, proc.stderr
    proc = cli("restore", "ok-3", "fail-1", "--sink", sink, "--into", url, "--json")
    assert proc.returncode == 0, proc.stderr
    app = celery_app(url)
    assert app.AsyncResult("ok-3").get(timeout=5)["n"] == 3
    with pytest.raises(ValueError, match="card declined"):
        app.AsyncResult("fail-1").get(timeout=5)
    proc = cli("restore", "ok-4", "--sink", sink, "--json")  # printed, through the index's ranged reads
    assert proc.returncode == 0, proc.stderr
    assert '"n": 4' in proc.stdout or '"n":4' in proc.stdout

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = cli("query", "--sink", sink, "select name, count(*) as n from results where kind = 'task' group by name order by name",
               "--json", env={"TMPDIR": str(tmp)})  # decrypted as read: in memory, no plaintext copy on disk
    assert proc.returncode == 0, proc.stderr
    counts = {r["name"]: r["n"] for r in map(json.loads, proc.stdout.splitlines())}
    assert counts["shop.checkout"] == 25 and counts["shop.charge"] == 3
    assert not list(tmp.rglob("*"))


def test_wrong_or_missing_key_material_is_named(tmp_path: Path) -> None:
    _url, _sink, root = archived(tmp_path)
    plain = f"file://{root}"
    other = f"file://{root}?encrypt=keyfile:{master_key(tmp_path, 'other.key')}"
    for wrong, says in ((plain, "is encrypted: give the sink URL with its key"), (other, "does not open with the master key")):
        for args in (("restore", "ok-3"), ("verify",)):
            proc = cli(*args, "--sink", wrong)
            assert proc.returncode == (3 if args == ("verify",) else 8)  # verify names it among its problems
            assert "Traceback" not in proc.stderr
            out = proc.stdout + proc.stderr
            assert says in out and "data/date=" in out, out
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    proc = cli("verify", "--sink", f"file://{root}?encrypt=keyfile:{short}")
    assert proc.returncode == 2 and "holds 16 bytes" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_without_the_key_on_an_encrypted_archive_is_refused(tmp_path: Path) -> None:
    """A nightly job whose sink URL lost its encrypt= option wrote the next run's results in
    clear beside the encrypted ones; it is refused (exit 2) and nothing is taken."""
    url, sink, root = archived(tmp_path)
    app = celery_app(url)
    app.backend.store_result("later-1", {"n": 1, "task": "shop.checkout"}, "SUCCESS")
    age_rows(url, 40, "task_id = 'later-1'")
    before = stored(root)
    proc = cli("run", "--source", url, "--sink", str(root), "--older-than", "30d", "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "holds encrypted runs" in json.loads(proc.stdout)["error"] and "encrypt=" in json.loads(proc.stdout)["error"]
    assert stored(root) == before and app.AsyncResult("later-1").state == "SUCCESS"
    again = cli("run", "--source", url, "--sink", sink, "--older-than", "30d", "--json")  # with its key: taken, encrypted
    assert again.returncode == 0 and json.loads(again.stdout)["deleted"] == 1, again.stdout + again.stderr



@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_archive_backend_reads_an_encrypted_archive(tmp_path: Path, fmt: str) -> None:
    url, sink, _root = archived(tmp_path, fmt)
    app = celery_app("archive+" + url, archive_sink=sink)  # the same sink URL, with its key
    assert app.AsyncResult("ok-3").get(timeout=5)["n"] == 3
    assert app.AsyncResult("fail-1").state == "FAILURE"
    with pytest.raises(ValueError, match="card declined"):
        app.AsyncResult("fail-1").get(timeout=5)


def readme_blocks() -> list[str]:
    section = (ROOT / "README.md").read_text().split("### Encrypted archives", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def run_block(block: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    assert cli("demo", "--dir", str(cwd / "celery-archive-demo"), "--json").returncode == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_readme_keyfile_example_runs_as_written(tmp_path: Path) -> None:
    out = run_block(readme_blocks()[0], tmp_path)
    forgot = json.loads(out.strip().splitlines()[-1])
    assert forgot["ok"] and forgot["results"] >= 1 and len(forgot["keys_destroyed"]) == 1
    assert (tmp_path / "master.key").stat().st_size == 32
    files = [p for p in (tmp_path / "encrypted" / "data").rglob("*.parquet")]
    assert files and all(p.read_bytes().endswith(b"PARE") for p in files)
    assert "SUCCESS" in out and "FAILURE" in out  # the query's counts, decrypted


def test_queries_over_many_encrypted_files_all_finish(tmp_path: Path) -> None:
    """pyarrow makes its KMS client on the first footer it decrypts, under a lock of its own,
    and needs the GIL for it; DuckDB's scan thread holds the GIL waiting on that lock. With
    eight files about one query in five never ended; each of these must end."""
    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    app = celery_app(url)
    for day in range(8):  # a data file per day
        for i in range(5):
            app.backend.store_result(f"d{day}-{i}", {"day": day}, "SUCCESS")
        age_rows(url, 40 + day, f"task_id like 'd{day}-%'")
    sink = f"file://{tmp_path / 'archive'}?encrypt=keyfile:{master_key(tmp_path)}"
    assert archive(url, sink).files == 8

    for _ in range(20):
        proc = cli("query", "--sink", sink, "select count(*) as n from results", "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"n": 40}
