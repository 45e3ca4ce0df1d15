"""Messages instead of tracebacks (issue 14, items 8 and 9): each mistake or damaged archive,
through the installed command, in text and in --json, says what is wrong and what to do, and
exits with its documented code (2: bad usage or configuration, 1: the archive cannot be read)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli, table_rows
from helpers import REDIS_URL

RUNS = 2  # the README: 2 bad usage or configuration
BROKEN = 1  # the README: 1 the backend or the archive could not be read or written


def fails(*args: str, code: int, says: tuple[str, ...], cwd: Path | None = None) -> None:
    """The command fails with ``code`` and a message holding each of ``says``, as text on
    stderr and as one JSON object with --json; never a traceback."""
    for as_json in (False, True):
        out = cli(*args, *(["--json"] if as_json else []), cwd=cwd)
        assert out.returncode == code, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        assert "Traceback" not in out.stderr + out.stdout, out.stderr
        if as_json:
            lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
            errors = [x for x in lines if x.get("ok") is False]
            assert len(errors) == 1 and errors[0]["exit_code"] == code and errors[0]["error_type"], out.stdout
            message = errors[0]["error"]
        else:
            message = out.stderr
        for phrase in says:
            assert phrase in message, f"{phrase!r} not in {message!r}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's backend and archive (made once; tests damage copies of it)."""
    where = tmp_path_factory.mktemp("demo")
    assert cli("demo", "--dir", str(where / "d"), cwd=where).returncode == 0
    return where / "d"


@pytest.fixture
def copy(demo: Path, tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(demo, tmp_path / "d")
    yield tmp_path / "d"


def test_ages_too_long_to_reach_back(demo: Path) -> None:
    db = f"db+sqlite:///{demo / 'results.db'}"
    fails("run", "--source", db, "--sink", str(demo / "archive"), "--older-than", "99999999d", "--dry-run", code=RUNS,
          says=("--older-than", "'99999999d' is too long", "give at most 1000y"))
    fails("restore", "--since", "99999999d", "--sink", str(demo / "archive"), code=RUNS,
          says=("--since", "'99999999d' is too long", "give at most 1000y"))
    fails("restore", "--until", "0001-01-01T00:00:00+05:00", "--sink", str(demo / "archive"), code=RUNS, says=("--until", "out of range"))


def test_a_sink_that_is_a_regular_file(demo: Path, tmp_path: Path) -> None:
    afile = tmp_path / "archive.txt"
    afile.write_text("not an archive")
    db = f"db+sqlite:///{demo / 'results.db'}"
    for args in (["run", "--source", db, "--older-than", "3d"], ["verify"], ["runs"], ["query", "select 1"], ["restore", "demo-00007"]):
        fails(*args, "--sink", str(afile), code=RUNS, says=(f"--sink {afile} is a file, not a directory", "give a directory"))
    fails("run", "--source", db, "--older-than", "3d", "--sink", str(afile / "below"), code=RUNS,
          says=(f"is inside {afile}, which is a file",))
    assert afile.read_text() == "not an archive"


@pytest.mark.parametrize("url,says", [
    ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=bogus", ("ssl_cert_reqs='bogus'", "use required, optional or none")),
    ("redis://127.0.0.1:6379/0?ssl_cert_reqs=required", ("ssl_cert_reqs needs a TLS connection", "use rediss://")),
    ("redis://127.0.0.1:6379/abc", ("the database 'abc' is not a number", "use /0 ... /15")),
    ("redis://127.0.0.1:6379/0/1", ("is not a database number",)),
    ("redis://127.0.0.1:6379/0?bogus=1", ("unknown option 'bogus'", "known: client_name")),
    ("redis://127.0.0.1:6379/0?socket_timeout=soon", ("socket_timeout='soon'", "use a number")),
    ("redis://:Sup3r-s3cret@127.0.0.1:http/0", ("the port is not a number",)),
    ("redis+socket:///tmp/redis.sock?virtual_host=abc", ("virtual_host='abc'", "use an integer")),
])
def test_a_bad_redis_url_is_a_configuration_error(tmp_path: Path, url: str, says: tuple[str, ...]) -> None:
    for args in (["run", "--sink", str(tmp_path / "a"), "--older-than", "1d", "--source", url],
                 ["stats", "--source", url, "--older-than", "1d"], ["restore", "x-0", "--sink", str(tmp_path / "a"), "--into", url]):
        fails(*args, code=RUNS, says=says)
        out = cli(*args)
        assert "Sup3r-s3cret" not in out.stdout + out.stderr
    assert not (tmp_path / "a").exists()


def test_a_good_redis_url_with_options_still_works(tmp_path: Path) -> None:
    out = cli("stats", "--source", f"{REDIS_URL}?socket_timeout=5&client_name=ca-test&health_check_interval=10",
              "--key-prefix", "ca-none-such-prefix", "--older-than", "1d", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"] == 0


def test_unknown_options_of_a_local_sink(demo: Path, tmp_path: Path) -> None:
    db = f"db+sqlite:///{demo / 'results.db'}"
    archive = demo / "archive"
    for sink in (f"file://{archive}?bogus=1", f"{archive}?bogus=1"):
        for args in (["run", "--source", db, "--older-than", "3d", "--dry-run"], ["verify"], ["query", "select 1"]):
            fails(*args, "--sink", sink, code=RUNS, says=("unknown option 'bogus'", "known: encrypt", "%3F"))
    # encrypt= is known (every sink takes it), and a value that names no master key is refused
    fails("verify", "--sink", f"file://{archive}?encrypt=aes256", code=RUNS,
          says=("encrypt='aes256'", "encrypt=keyfile:/path/to/master.key", "encrypt=kms:alias/NAME"))
    # a directory whose name holds a '?' is used as it is, and reached by file:// with %3F
    odd = tmp_path / "arch?ive=1"
    shutil.copytree(archive, odd)
    for sink in (str(odd), f"file://{str(odd).replace('?', '%3F')}"):
        out = cli("verify", "--sink", sink, "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["ok"], out.stdout + out.stderr


def test_query_with_a_committed_data_file_missing(copy: Path) -> None:
    next((copy / "archive" / "data").rglob("*.parquet")).unlink()
    fails("query", "--sink", str(copy / "archive"), "select count(*) from results", code=BROKEN,
          says=("a data file of a committed run is missing", f"celery-archive verify --sink {copy / 'archive'}"))


def test_query_with_a_damaged_data_file(copy: Path) -> None:
    next((copy / "archive" / "data").rglob("*.parquet")).write_bytes(b"not parquet at all")
    fails("query", "--sink", str(copy / "archive"), "select count(*) from results", code=BROKEN,
          says=("the query failed reading the archive's data files", "celery-archive verify --sink"))


def test_restore_with_truncated_index_packs(copy: Path) -> None:
    sink = str(copy / "archive")
    assert cli("index", "compact", "--sink", sink).returncode == 0
    for pack in (copy / "archive" / "index" / "packs").rglob("*.parquet"):
        pack.write_bytes(pack.read_bytes()[:40])
    fails("restore", "demo-00007", "--sink", sink, code=BROKEN,
          says=("the restore index object index/packs/", "is damaged", f"celery-archive index rebuild --sink {sink}"))
    assert cli("index", "rebuild", "--sink", sink).returncode == 0  # what the message says to do
    assert cli("restore", "demo-00007", "--sink", sink).returncode == 0


def test_restore_with_a_corrupted_data_file(copy: Path) -> None:
    sink, db = str(copy / "archive"), f"db+sqlite:///{copy / 'results.db'}"
    for path in (copy / "archive" / "data").rglob("*.parquet"):  # every data file: bytes flipped in the middle
        data = bytearray(path.read_bytes())
        data[len(data) // 3 : len(data) // 3 + 300] = bytes(b ^ 0xFF for b in data[len(data) // 3 : len(data) // 3 + 300])
        path.write_bytes(bytes(data))
    before = table_rows(db)
    fails("restore", "demo-00007", "demo-00001", "--sink", sink, code=BROKEN,
          says=("data file data/date=", "is damaged", f"celery-archive verify --sink {sink}"))
    fails("restore", "--since", "60d", "--sink", sink, "--into", db, code=BROKEN,
          says=("is damaged", "where its manifest says", "nothing was restored from it"))
    assert table_rows(db) == before


def test_a_rate_too_small_to_wait_for_and_a_file_url_without_a_path(demo: Path, tmp_path: Path) -> None:
    db = f"db+sqlite:///{demo / 'results.db'}"
    fails("run", "--source", db, "--sink", str(tmp_path / "a"), "--older-than", "3d", "--max-rate", "1e-300", code=RUNS,
          says=("--max-rate", "at least 0.001"))
    fails("runs", "--sink", "file://", code=RUNS, says=("names no directory", "file:///absolute/path"))


def test_restore_with_a_committed_data_file_missing(copy: Path) -> None:
    sink = str(copy / "archive")
    for path in (copy / "archive" / "data").rglob("*.parquet"):
        path.unlink()
    for args in (["demo-00007"], ["--since", "60d"]):
        fails("restore", *args, "--sink", sink, code=BROKEN,
              says=("of a committed run is missing", f"celery-archive verify --sink {sink}"))


@pytest.mark.parametrize(("typed", "meant"), [("verfy", "verify"), ("restor", "restore"), ("prun", "prune")])
def test_a_mistyped_command_is_told_the_nearest_one(typed: str, meant: str) -> None:
    """click suggests options for a typo ('Did you mean --source?') but said only "No such
    command 'verfy'" for a command."""
    out = cli(typed, "--sink", "archive")
    assert out.returncode == 2 and f"Did you mean '{meant}'" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "Did you mean" not in cli("zzzz").stderr
