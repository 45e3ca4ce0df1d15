"""Found by the field test after the layout refactor (issue 16): each test failed on the
branch point and passes after its fix. Real servers, the installed command."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from test_cli_errors import BROKEN, fails

VERIFY_FAILED = 3  # the README: 3 verification failed


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("demo")
    assert cli("demo", "--dir", str(where / "d"), cwd=where).returncode == 0
    return where / "d"


@pytest.fixture
def copy(demo: Path, tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(demo, tmp_path / "d")
    yield tmp_path / "d"


def _edit(path: Path, change: Any) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _verify_fails(sink: Path | str) -> list[str]:
    """verify's problems, after checking it failed as a verify does (exit 3, in text and JSON)."""
    text = cli("verify", "--sink", str(sink))
    assert text.returncode == VERIFY_FAILED and "Traceback" not in text.stderr, text.stdout + text.stderr
    out = cli("verify", "--sink", str(sink), "--json")
    assert out.returncode == VERIFY_FAILED, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is False and report["problems"]
    return list(report["problems"])


@pytest.mark.parametrize(("field", "value"), [("rows", "abc"), ("rows", [1]), ("kinds", "x"), ("key", 5), ("bytes", None)])
def test_a_manifest_field_of_the_wrong_type_is_named_not_a_traceback(copy: Path, field: str, value: Any) -> None:
    """A manifest whose file entry holds ``"rows": "abc"`` (or a list, or a number for the
    key) made verify, runs, restore --run and query end in a ValueError/TypeError traceback."""
    sink = copy / "archive"
    manifest = sorted((sink / "manifests").glob("*.json"))[0]
    _edit(manifest, lambda m: m["files"][0].__setitem__(field, value))
    for command in (["runs"], ["restore", "--run", manifest.stem], ["query", "select count(*) from results"]):
        fails(*command, "--sink", str(sink), code=BROKEN, says=(manifest.name, "wrong type"))
    assert any(manifest.name in p and "wrong type" in p for p in _verify_fails(sink))


def test_a_run_report_field_of_the_wrong_type_is_named(copy: Path) -> None:
    sink = copy / "archive"
    report = sorted((sink / "runs").glob("*.json"))[0]
    _edit(report, lambda r: r.__setitem__("verified", "many"))
    fails("runs", "--sink", str(sink), code=BROKEN, says=(report.name, "wrong type"))


@pytest.mark.parametrize("damage", ["{not json", '{"run_id": "x"}', "[]"])
def test_manifest_rebuild_writes_a_damaged_manifest_again_as_its_message_says(copy: Path, damage: str) -> None:
    """verify, runs, query and restore --run say of a damaged manifest that `manifest rebuild`
    writes it again; it said "nothing to rebuild" and left the archive unreadable."""
    sink = copy / "archive"
    manifest = sorted((sink / "manifests").glob("*.json"))[0]
    good = manifest.read_bytes()
    manifest.write_text(damage)
    assert any(manifest.name in p and "manifest rebuild" in p for p in _verify_fails(sink))
    out = cli("manifest", "rebuild", "--sink", str(sink), "--run", manifest.stem, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)["rebuilt"]] == [manifest.stem]
    assert manifest.read_bytes() == good
    assert json.loads(cli("verify", "--sink", str(sink), "--json").stdout)["rows"] == 201


def _packs(sink: Path) -> list[Path]:
    assert cli("index", "compact", "--sink", str(sink)).returncode == 0
    return sorted(p for p in (sink / "index").rglob("*.parquet") if "log" not in p.parts)


def test_manifest_rebuild_names_a_damaged_index_pack(copy: Path) -> None:
    """A truncated index pack made `manifest rebuild` end in pyarrow's ArrowInvalid traceback."""
    sink = copy / "archive"
    for pack in _packs(sink):
        pack.write_bytes(pack.read_bytes()[:30])
    fails("manifest", "rebuild", "--sink", str(sink), code=BROKEN, says=("restore index object", "is damaged", "index rebuild"))
    assert cli("index", "rebuild", "--sink", str(sink)).returncode == 0
    assert cli("manifest", "rebuild", "--sink", str(sink)).returncode == 0
    assert cli("restore", "demo-00003", "--sink", str(sink)).returncode == 0


def test_a_missing_index_pack_is_named_not_try_again(copy: Path) -> None:
    """With a pack deleted, restore said "the index kept changing while being read; try
    again", which no retry mends; it names the missing object and `index rebuild`."""
    sink = copy / "archive"
    for pack in _packs(sink):
        pack.unlink()
    fails("restore", "demo-00003", "--sink", str(sink), code=BROKEN, says=("is missing", "index rebuild"))
    assert cli("index", "rebuild", "--sink", str(sink)).returncode == 0
    out = cli("restore", "demo-00003", "--sink", str(sink), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["found"] is True, out.stdout + out.stderr


def test_manifest_rebuild_replaces_a_damaged_manifest_on_s3(copy: Path, s3_bucket: str) -> None:
    """The same on S3, whose writes are create-only: the damaged object is replaced."""
    import boto3

    sink = f"s3://{s3_bucket}/arch"
    run = cli("run", "--source", f"db+sqlite:///{copy / 'results.db'}", "--sink", sink, "--older-than", "1h", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    rid, rows = json.loads(run.stdout)["run_id"], json.loads(run.stdout)["verified"]
    s3 = boto3.client("s3")
    key = f"arch/manifests/{rid}.json"
    good = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b'{"files": "truncated')
    fails("query", "--sink", sink, "select count(*) from results", code=BROKEN, says=(f"manifests/{rid}.json", "manifest rebuild"))
    out = cli("manifest", "rebuild", "--sink", sink, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["rebuilt"][0]["run_id"] == rid, out.stdout + out.stderr
    assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == good
    assert json.loads(cli("verify", "--sink", sink, "--json").stdout)["rows"] == rows > 0


@pytest.mark.parametrize("damage", ["{not json", '{"files": [{"format": "csv"}]}', '{"run_id": 1}'])
def test_verify_reports_a_damaged_manifest_and_checks_the_other_runs(copy: Path, damage: str) -> None:
    """Before the refactor verify reported a manifest entry of format "csv" as a problem
    (exit 3) and went on; after it, any damaged manifest stopped verify at once (exit 1),
    leaving every other run unchecked."""
    sink = copy / "archive"
    run = cli("run", "--source", f"db+sqlite:///{copy / 'results.db'}", "--sink", str(sink), "--older-than", "1h", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    second = json.loads(run.stdout)
    first = next(p for p in sorted((sink / "manifests").glob("*.json")) if p.stem != second["run_id"])
    first.write_text(damage)
    problems = _verify_fails(sink)
    assert len(problems) == 1 and first.stem in problems[0], problems
    report = json.loads(cli("verify", "--sink", str(sink), "--json").stdout)
    assert report["runs"] == 2 and report["rows"] == second["verified"] > 0


@pytest.mark.parametrize("damage", ["{not json", '{"run_id": 1, "verified": "many"}'])
def test_a_damaged_run_report_does_not_stop_archiving(copy: Path, damage: str) -> None:
    """An edited ``runs/<id>.json`` (only the record of a finished purge) made every later run
    fail before it archived anything; verify said the archive was fine."""
    sink, source = copy / "archive", f"db+sqlite:///{copy / 'results.db'}"
    report = sorted((sink / "runs").glob("*.json"))[0]
    report.write_text(damage)
    run = cli("run", "--source", source, "--sink", str(sink), "--older-than", "1h", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout)
    assert out["verified"] == out["deleted"] > 0
    assert [w for w in out["warnings"] if report.name in w and "put back a copy" in w], out["warnings"]
    problems = _verify_fails(sink)
    assert len(problems) == 1 and report.name in problems[0], problems


def test_a_damaged_no_delete_report_leaves_the_purge_to_the_next_run(copy: Path) -> None:
    """``runs/<id>.kept.json`` of a --no-delete run, damaged: the next deleting run finishes that
    run's purge (verified, unchanged results only) instead of stopping."""
    import sqlite3

    sink, source = copy / "archive", f"db+sqlite:///{copy / 'results.db'}"
    kept = cli("run", "--source", source, "--sink", str(sink), "--older-than", "1h", "--no-delete", "--json")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    rid, archived = json.loads(kept.stdout)["run_id"], json.loads(kept.stdout)["verified"]
    (sink / "runs" / f"{rid}.kept.json").write_text("{not json")
    def stored() -> int:
        with sqlite3.connect(copy / "results.db") as db:
            return sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("celery_taskmeta", "celery_tasksetmeta"))

    before = stored()
    run = cli("run", "--source", source, "--sink", str(sink), "--older-than", "1h", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert rid in json.loads(run.stdout)["resumed"], run.stdout
    assert archived > 0 and stored() == before - archived - json.loads(run.stdout)["deleted"]
    assert json.loads((sink / "runs" / f"{rid}.json").read_text())["purged"] is True
