"""`celery-archive restore ID --sink DIR [--json]` runs without click (cli/fast.py): a fresh
process imports no CLI framework, backend driver, Celery, boto3, DuckDB or pyarrow.parquet, and
prints the same bytes, with the same exit code, as the click command does for the same
arguments; any other shape of the command line still goes to click."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import age_rows, celery_app
from helpers import IMPORTS_PROBE, archive, write_sql_results

# what a lookup by id must not load (issue 20: the start-up is most of the command's time)
NOT_LOADED = {"click", "rich", "celery", "kombu", "sqlalchemy", "redis", "boto3", "botocore", "duckdb",
              "pyarrow.parquet", "pyarrow.fs", "pyarrow.compute", "pyarrow.dataset", "celery_archive.cli.base"}
CLICK_PATH = "import sys\nfrom celery_archive.cli import main\nmain(sys.argv[1:], prog_name='celery-archive')\n"
ODD_TEXT = "\x1b[31mred\x1b[0m, ünïcode, \u2028, tab\t"  # click strips ANSI codes from what is not a terminal


@pytest.fixture(scope="module")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One set of results archived as Parquet, as JSONL+zstd, and as encrypted Parquet."""
    from celery.app.task import Context

    tmp = tmp_path_factory.mktemp("restore-imports")
    key = tmp / "master.key"
    key.write_bytes(os.urandom(32))
    out = {}
    for name, kw, sink in (("parquet", {}, str(tmp / "parquet")), ("jsonl", {"format": "jsonl", "compression": "zstd"}, str(tmp / "jsonl")),
                           ("encrypted", {}, f"file://{tmp / 'encrypted'}?encrypt=keyfile:{key}")):
        url = f"db+sqlite:///{tmp / (name + '.db')}"
        app = celery_app(url)
        write_sql_results(app)
        req = Context(id="odd-0", task="shop.odd", args=[ODD_TEXT], kwargs={}, hostname="w@h", retries=0, delivery_info={})
        app.backend.store_result("odd-0", {"s": ODD_TEXT, "tiny": 1e-7, "big": 1e16, "neg": -0.0, "n": 2**62}, "SUCCESS", request=req)
        try:
            raise RuntimeError(ODD_TEXT)
        except RuntimeError as exc:
            app.backend.mark_as_failure("odd-1", exc, traceback=f"Traceback:\n  \x1b[1m{ODD_TEXT}\x1b[0m\nRuntimeError", request=req)
        age_rows(url, 40)
        age_rows(url, 40, table="celery_tasksetmeta")
        report = archive(url, sink, **kw)  # type: ignore[arg-type]
        assert report.archived == report.deleted > 30
        out[name] = sink
    return out


def run(code: str, *args: str) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def both(*args: str) -> tuple[tuple[int, bytes, bytes], set[str]]:
    """What the console script did (exit code, stdout, stderr) and what it imported, after
    checking that the click command does exactly the same."""
    code, out, err = run(IMPORTS_PROBE, *args)
    *lines, modules = err.decode().splitlines(keepends=True)
    got = (code, out, "".join(lines).encode())
    assert got == run(CLICK_PATH, *args), args
    return got, set(json.loads(modules))


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "encrypted"])
def test_a_restore_by_id_loads_no_cli_framework_and_prints_what_click_prints(sinks: dict[str, str], kind: str) -> None:
    sink = sinks[kind]
    encrypted = {"pyarrow.parquet", "pyarrow.fs"} if kind == "encrypted" else set()  # pyarrow's Parquet decryption is there
    for args in (["ok-3", "--json"], ["ok-3"], ["odd-0", "odd-1", "--json"], ["odd-0", "odd-1"], ["group-0", "fail-2"]):
        (code, out, err), modules = both("restore", *args[:1], "--sink", sink, *args[1:])
        assert code == 0 and err == b"", err.decode()[-2000:]
        assert modules & (NOT_LOADED - encrypted) == set(), args
        if "--json" in args:
            records = [json.loads(line) for line in out.splitlines()]  # bytes: U+2028 is not a line end
            assert [r["task_id"] for r in records] == [a for a in args if a != "--json"]
    (_, out, _), _ = both("restore", "odd-0", "--json", f"--sink={sink}")
    rec = json.loads(out)
    assert rec["result"]["s"] == ODD_TEXT and rec["result"]["tiny"] == 1e-7 and rec["result"]["n"] == 2**62
    (_, out, _), _ = both("restore", "odd-1", "--sink", sink)
    assert "\x1b" not in out.decode() and "[1m" not in out.decode() and "red, ünïcode" in out.decode()


def test_errors_are_the_click_commands(sinks: dict[str, str], tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    encrypted_dir = sinks["encrypted"].removeprefix("file://").partition("?")[0]
    cases: list[tuple[list[str], int, str]] = [
        (["ok-3", "nope-1", "nope-2", "--sink", sinks["parquet"]], 5, "not in the archive at"),
        (["--sink", str(a_file), "ok-3"], 2, "a file, not a directory"),
        (["ok-3", "--sink", sinks["parquet"] + "?bogus=1"], 2, "unknown option 'bogus'"),
        (["ok-3", "--sink", encrypted_dir], 8, "is encrypted: give the sink URL with its key"),
    ]
    for args, exit_code, says in cases:
        for as_json in (False, True):
            (code, out, err), modules = both("restore", *args, *(["--json"] if as_json else []))
            assert code == exit_code and "Traceback" not in err.decode(), (args, err.decode()[-2000:])
            assert "click" not in modules
            if as_json:
                last: dict[str, Any] = json.loads(out.splitlines()[-1])
                assert last["ok"] is False and last["exit_code"] == exit_code and says in last["error"], last
                assert last["error_type"] and err == b""
            else:
                assert says in err.decode()


@pytest.mark.parametrize(("args", "exit_code"), [
    (["--help"], 0), (["ok-3", "--json", "--json"], 0), (["ok-3", "--on-conflict", "skip"], 0), (["-h"], 0),
    (["ok-3", "--since", "1d"], 2), ([], 2), (["ok-3", "--sink", ""], 2), (["ok-3", "--bogus"], 2), (["-", "--json"], 5),
])
def test_any_other_command_line_goes_to_click(sinks: dict[str, str], args: list[str], exit_code: int) -> None:
    argv = ["restore", *args] if "--sink" in args else ["restore", "--sink", sinks["parquet"], *args]
    (code, out, err), modules = both(*argv)
    assert "click" in modules and code == exit_code, (out + err).decode()[-2000:]
    if "-h" in args or "--help" in args:
        assert out.startswith(b"Usage: celery-archive restore")


def test_json_lines_are_orjsons_bytes_whoever_writes_them() -> None:
    """The standard library writes and reads a restore's JSON only where it gives orjson's
    bytes and values exactly; floats, big integers, NaN and escaped surrogates go to orjson."""
    import random

    import orjson

    from celery_archive.cli.output import json_line, json_value

    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert json_line({"s": every, every: [every]}) == orjson.dumps({"s": every, every: [every]}).decode()
    for text in ('"\\ud800"', "NaN", "[1e400]", "[1,2", '{"a":1}x', '"\\u0000\\ud83d\\ude00"', "18446744073709551616", "-0",
                 '{"a":1,"a":[2.5,-0.0,1e-7,1e16,3]}', "[" * 1100 + "]" * 1100, '"\\\\ud800"'):
        try:
            want: Any = ("value", orjson.loads(text))
        except orjson.JSONDecodeError:
            want = ("refused", None)
        try:
            got: Any = ("value", json_value(text))
        except orjson.JSONDecodeError:
            got = ("refused", None)
        assert repr(got) == repr(want), text[:40]
        if want[0] == "value":
            assert json_line({"v": got[1]}) == orjson.dumps({"v": want[1]}).decode()
    rnd = random.Random(20)

    def value(depth: int = 0) -> Any:
        pick = rnd.random()
        if depth > 3 or pick < 0.4:
            return rnd.choice([None, True, False, rnd.randrange(-2**65, 2**65), rnd.randrange(100), rnd.uniform(-1e20, 1e20),
                               10 ** rnd.uniform(-30, 30), "".join(chr(rnd.choice([rnd.randrange(128), rnd.randrange(0xD7FF),
                                                                               rnd.randrange(0xE000, 0x110000)])) for _ in range(4))])
        if pick < 0.7:
            return [value(depth + 1) for _ in range(rnd.randrange(4))]
        return {str(rnd.random()): value(depth + 1) for _ in range(rnd.randrange(4))}

    for _ in range(5000):
        try:
            text = orjson.dumps(value()).decode()
        except TypeError:  # an integer orjson does not write
            continue
        assert repr(json_value(text)) == repr(orjson.loads(text)), text
        assert json_line({"v": json_value(text), "t": text}) == orjson.dumps({"v": orjson.loads(text), "t": text}).decode()


def test_a_lookup_by_id_writes_nothing_to_the_archive(tmp_path: Path) -> None:
    """No staging directory is made for it (only a selection by run, date or name stages data
    files), so an archive the command may only read is enough."""
    import shutil

    from conftest import ROOT

    sink = tmp_path / "archive"
    shutil.copytree(ROOT / "tests" / "fixtures" / "archive-v1", sink)
    before = sorted(p.relative_to(sink) for p in sink.rglob("*"))
    (code, out, _), _ = both("restore", "ok-3", "fail-1", "--sink", str(sink), "--json")
    assert code == 0 and [json.loads(line)["task_id"] for line in out.splitlines()] == ["ok-3", "fail-1"]
    assert sorted(p.relative_to(sink) for p in sink.rglob("*")) == before


def test_on_s3_too(sqlite_url: str, s3_bucket: str) -> None:
    """An S3 sink (moto's server, real HTTP) through the same path: what the click command prints."""
    app = celery_app(sqlite_url)
    write_sql_results(app)
    age_rows(sqlite_url, 40)
    sink = f"s3://{s3_bucket}/prod"
    assert archive(sqlite_url, sink).archived > 25
    (code, out, err), modules = both("restore", "ok-3", "fail-1", "--sink", sink, "--json")
    assert code == 0 and [json.loads(line)["task_id"] for line in out.splitlines()] == ["ok-3", "fail-1"], err
    assert "click" not in modules and "boto3" in modules
    (code, out, err), _ = both("restore", "ok-3", "nope", "--sink", sink)
    assert code == 5 and b"not in the archive at s3://" in err
