"""Tamper evidence (archive/chain.py): each committed manifest links the sha256 of the one
committed before it; verify walks the chain and names a removed or altered manifest (exit 3);
a superseding version (what forget and prune write) keeps the chain whole; archives written
before the chain (the v1 fixture) verify as before."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, age_rows, celery_app, cli

from celery_archive.archive import chain
from celery_archive.archive import manifest as mf
from celery_archive.archive.manifest import Manifest
from celery_archive.sinks import Sink, open_sink

VERIFY_FAILED = 3


def _runs(source: str, sink: str, n: int) -> list[str]:
    """``n`` runs into ``sink``, each archiving three results of its own; their run ids."""
    app = celery_app(source)
    ids = []
    for r in range(n):
        for i in range(3):
            app.backend.store_result(f"c{r}-{i}", {"n": i}, "SUCCESS")
        age_rows(source, 40, f"task_id LIKE 'c{r}-%'")
        out = cli("run", "--source", source, "--sink", sink, "--older-than", "30d", "--json")
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout)["run_id"])
    return ids


def _verify(sink: str, *args: str) -> tuple[int, dict[str, object]]:
    out = cli("verify", "--sink", sink, *args, "--json")
    return out.returncode, json.loads(out.stdout)


def _problems(report: dict[str, object]) -> list[str]:
    problems = report["problems"]
    assert isinstance(problems, list)
    return [str(p) for p in problems]


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/prod"
    return str(tmp_path / "archive")


def _stored(sink: Sink, run_id: str) -> bytes:
    with sink.open(mf.manifest_key(run_id)) as f:
        return f.read()


def test_each_manifest_links_the_one_before_and_verify_prints_the_head(sqlite_url: str, where: str) -> None:
    ids = _runs(sqlite_url, where, 3)
    sink = open_sink(where)
    raw = [_stored(sink, r) for r in ids]
    manifests = [Manifest.from_json(json.loads(b)) for b in raw]
    assert [m.manifest_version for m in manifests] == [2, 2, 2]
    assert [m.chain for m in manifests] == [
        {"seq": 1, "previous": None},
        {"seq": 2, "previous": {"run_id": ids[0], "sha256": hashlib.sha256(raw[0]).hexdigest()}},
        {"seq": 3, "previous": {"run_id": ids[1], "sha256": hashlib.sha256(raw[1]).hexdigest()}},
    ]
    assert all(mf.json_bytes(m.to_json()) == b for m, b in zip(manifests, raw))  # byte-compatible round trips
    code, report = _verify(where)
    assert code == 0, report
    assert report["head"] == hashlib.sha256(raw[2]).hexdigest() and report["chain_length"] == 3
    assert _verify(where, "--head", hashlib.sha256(raw[1]).hexdigest())[0] == 0  # an older head is still in the chain


def test_a_removed_manifest_breaks_the_chain_and_is_named(sqlite_url: str, where: str) -> None:
    ids = _runs(sqlite_url, where, 3)
    sink = open_sink(where)
    sink.delete(mf.manifest_key(ids[1]))
    sink.delete(mf.outcome_key(ids[1]))  # its commit record too: nothing left to rebuild it from
    code, report = _verify(where)
    assert code == VERIFY_FAILED
    assert any(f"run {ids[1]}: its committed manifest (chain position 2" in p and "was removed" in p
               for p in _problems(report)), report


def test_a_removed_manifest_whose_commit_record_is_kept_names_manifest_rebuild(sqlite_url: str, tmp_path: Path) -> None:
    where = str(tmp_path / "archive")
    ids = _runs(sqlite_url, where, 2)
    open_sink(where).delete(mf.manifest_key(ids[0]))
    code, report = _verify(where)
    assert code == VERIFY_FAILED
    assert any(f"run {ids[0]}" in p and "manifest rebuild" in p for p in _problems(report)), report
    assert cli("manifest", "rebuild", "--sink", where).returncode == 0
    assert _verify(where)[0] == 0  # the same bytes again: the chain is whole


def test_an_edited_manifest_breaks_the_chain_and_is_named(sqlite_url: str, where: str) -> None:
    ids = _runs(sqlite_url, where, 3)
    sink = open_sink(where)
    obj = json.loads(_stored(sink, ids[1]))
    obj["older_than"] = "1d"  # still a valid manifest, and its files still match it
    sink.delete(mf.manifest_key(ids[1]))
    mf.write_json(sink, mf.manifest_key(ids[1]), obj)
    code, report = _verify(where)
    assert code == VERIFY_FAILED
    assert [p for p in _problems(report) if "chain" in p] == [
        f"run {ids[1]}: its manifest was altered after it was committed (sha256 now "
        f"{hashlib.sha256(_stored(sink, ids[1])).hexdigest()}; chain position 2, sha256 "
        f"{chain.positions(sink)[1].sha256})"], report


def test_a_rewritten_chain_is_caught_by_a_head_kept_elsewhere(sqlite_url: str, tmp_path: Path) -> None:
    where = str(tmp_path / "archive")
    ids = _runs(sqlite_url, where, 2)
    head = _verify(where)[1]["head"]
    sink = open_sink(where)
    for key in (mf.manifest_key(ids[1]), mf.outcome_key(ids[1]), "chain/000000000002.json", mf.report_key(ids[1])):
        sink.delete(key)  # the last run gone without a trace but its data files...
    for obj in list(sink.list("data/")):
        if ids[1] in obj.key:
            sink.delete(obj.key)  # ...and those too
    assert _verify(where)[0] == 0  # nothing inside the archive can tell
    code, report = _verify(where, "--head", str(head))
    assert code == VERIFY_FAILED and any(f"the head kept earlier ({head}) is not in the chain" in p for p in _problems(report))


def test_a_superseding_version_keeps_the_chain_whole(sqlite_url: str, where: str) -> None:
    """What forget and prune do: a new revision of a run's manifest, linked at the head, that
    names the sha256 of the one it supersedes; the old one may then go."""
    ids = _runs(sqlite_url, where, 3)
    sink = open_sink(where)
    old = Manifest.from_json(json.loads(_stored(sink, ids[1])))

    def revise(m: Manifest, n: int) -> Manifest:
        return dataclasses.replace(m, extra={**m.extra, "revision": n, "supersedes": chain.superseding(m)}, chain=chain.link(sink))

    new = revise(old, 2)
    chain.register(sink, new)
    code, report = _verify(where)  # stopped here: registered, not in place yet
    assert code == 0 and any(f"run {ids[1]}: a new version of its manifest (chain position 4)" in n
                             for n in report["notes"]), report  # type: ignore[attr-defined]
    assert chain.register(sink, new) == mf.manifest_sha256(new)  # again: the same position, nothing new
    sink.delete(mf.manifest_key(ids[1]))
    mf.publish(sink, new)
    code, report = _verify(where)
    assert code == 0, report
    assert report["chain_length"] == 4 and report["head"] == mf.manifest_sha256(new)
    assert chain.positions(sink)[3].supersedes == {"sha256": mf.manifest_sha256(old), **old.chain}  # type: ignore[dict-item]
    # replaced once more (written first, registered after): the first revision is still accounted for
    newer = revise(new, 3)
    sink.delete(mf.manifest_key(ids[1]))
    mf.publish(sink, newer)
    code, report = _verify(where)  # stopped between writing and registering: noted, not a break
    assert code == 0 and any(f"run {ids[1]} committed but its chain position is not registered yet" in n
                             for n in report["notes"]), report  # type: ignore[attr-defined]
    chain.register(sink, newer)
    code, report = _verify(where)
    assert code == 0 and report["chain_length"] == 5 and not report["notes"], report
    # but a revision that is not linked at the head (it kept its predecessor's link) is a break
    sink.delete(mf.manifest_key(ids[1]))
    mf.publish(sink, dataclasses.replace(newer, extra={**newer.extra, "revision": 4, "supersedes": chain.superseding(newer)}))
    code, report = _verify(where)
    assert code == VERIFY_FAILED and any(f"run {ids[1]}: its manifest claims chain position 5, which chain/ does not "
                                         "record for it" in p for p in _problems(report)), report


def test_an_archive_written_before_the_chain_verifies_as_before_and_the_chain_starts_after_it(
        sqlite_url: str, tmp_path: Path) -> None:
    """The v1 fixture (manifest v1, no links): verified, queried and restored as before; a new
    run on top starts the chain, and the v1 manifests read and write back byte for byte."""
    sink_dir = tmp_path / "archive-v1"
    shutil.copytree(ROOT / "tests" / "fixtures" / "archive-v1", sink_dir)
    where = str(sink_dir)
    code, report = _verify(where)
    assert code == 0 and report["head"] is None and report["chain_length"] == 0
    import jsonschema

    from celery_archive.schemas import json_schema

    sink = open_sink(where)
    for run_id in mf.committed_runs(sink):
        raw = _stored(sink, run_id)
        jsonschema.Draft202012Validator(json_schema("manifest", 1)).validate(json.loads(raw))
        m = Manifest.from_json(json.loads(raw))
        assert m.manifest_version == 1 and m.chain is None and mf.json_bytes(m.to_json()) == raw
    (new_run,) = _runs(sqlite_url, where, 1)
    m = mf.load_manifest(sink, new_run)
    assert m.manifest_version == 2 and m.chain == {"seq": 1, "previous": None}
    jsonschema.Draft202012Validator(json_schema("manifest", 2)).validate(json.loads(_stored(sink, new_run)))
    with pytest.raises(jsonschema.ValidationError):  # v2 is v2: the v1 schema's version does not take it
        jsonschema.Draft202012Validator(json_schema("manifest", 1)).validate(json.loads(_stored(sink, new_run)))
    code, report = _verify(where)
    assert code == 0 and report["chain_length"] == 1, report
    assert cli("restore", "ok-3", "--sink", where, "--json").returncode == 0
    out = cli("query", "--sink", where, "SELECT count(*) AS n FROM results WHERE task_id LIKE 'c0-%' OR run_id LIKE "
              "'20261125T175139Z-%'", "--json")
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[0])["n"] == 30 + 3, out.stdout + out.stderr


def test_the_readme_head_example_runs_as_written(tmp_path: Path) -> None:
    """README, "Compliance": the head kept in a file, then checked by verify --head."""
    import os
    import re
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text().split("### Tamper evidence", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block and "--head" in block.group(1)
    assert cli("demo", "--dir", str(tmp_path / "celery-archive-demo"), "--json").returncode == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = (tmp_path / "head.txt").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", head) and f"head {head}" in proc.stdout


def test_a_run_killed_between_its_commit_and_its_chain_position_is_registered_by_the_next(
        sqlite_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from test_recovery import HARNESS, fill

    where = str(tmp_path / "archive")
    (first,) = _runs(sqlite_url, where, 1)
    fill(sqlite_url)
    proc = subprocess.run([sys.executable, str(HARNESS), "after-commit", sqlite_url, where], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    sink = open_sink(where)
    (dead,) = [o.key[len("outcomes/"):-5] for o in sink.list("outcomes/") if first not in o.key]
    assert [p.run_id for p in chain.positions(sink)] == [first]  # committed, not registered, not published
    (last,) = _runs(sqlite_url, where, 1)  # its recovery registers and publishes the dead run first
    assert [p.run_id for p in chain.positions(sink)] == [first, dead, last]
    assert mf.load_manifest(sink, last).chain == {"seq": 3, "previous": {"run_id": dead, "sha256": mf.manifest_sha256(
        mf.load_manifest(sink, dead))}}
    code, report = _verify(where)
    assert code == 0 and report["chain_length"] == 3, report


def test_a_removed_chain_position_is_named(sqlite_url: str, tmp_path: Path) -> None:
    where = str(tmp_path / "archive")
    ids = _runs(sqlite_url, where, 3)
    open_sink(where).delete("chain/000000000002.json")
    code, report = _verify(where)
    problems = _problems(report)
    assert code == VERIFY_FAILED
    assert "chain position 2 (chain/000000000002.json) is missing: removed from the archive" in problems
    assert any(f"run {ids[1]}: its manifest claims chain position 2" in p for p in problems), problems
