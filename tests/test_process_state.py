"""celery-archive leaves its host process as it found it: importing the package (every module
of it) and running the CLI in-process (a run, then a restore) changes no environment variable,
leaves the garbage collector on and unfrozen, puts no None into sys.modules and gives Arrow's
default memory pool back; and a Celery app given with -A may import polars."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import age_rows, celery_app, cli, table_rows

# Run in a fresh interpreter: the test process has imported (and set) too much to tell.
PROBE = textwrap.dedent('''
    import gc, json, os, sys

    def state():
        import pyarrow as pa
        return {"env": dict(os.environ), "gc": [gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()],
                "none": sorted(k for k, v in sys.modules.items() if v is None),
                "pool": pa.default_memory_pool().backend_name}

    source, sink = sys.argv[1], sys.argv[2]
    before = state()
    import importlib, pkgutil
    import celery_archive
    modules = [m.name for m in pkgutil.walk_packages(celery_archive.__path__, "celery_archive.")]
    for name in modules:
        importlib.import_module(name)
    imported = state()
    from click.testing import CliRunner
    from celery_archive.cli import main
    ran = CliRunner().invoke(main, ["run", "--source", source, "--sink", sink, "--older-than", "30d", "--json"])
    restored = CliRunner().invoke(main, ["restore", "ok-0", "ok-1", "--sink", sink, "--into", source, "--json"])
    print(json.dumps({"before": before, "imported": imported, "after": state(), "modules": modules,
                      "run": [ran.exit_code, ran.output], "restore": [restored.exit_code, restored.output]}))
''')


def old_results(url: str, n: int) -> None:
    """``n`` results written by Celery's DatabaseBackend, 40 days old."""
    app = celery_app(url)
    for i in range(n):
        app.backend.store_result(f"ok-{i}", {"n": i}, "SUCCESS")
    age_rows(url, 40)


def test_importing_and_running_the_cli_change_no_process_state(sqlite_url: str, tmp_path: Path) -> None:
    old_results(sqlite_url, 3)
    proc = subprocess.run([sys.executable, "-c", PROBE, sqlite_url, str(tmp_path / "archive")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert len(got["modules"]) > 30 and "celery_archive.cli.run" in got["modules"]
    code, out = got["run"]
    assert code == 0 and json.loads(out)["deleted"] == 3, out
    code, out = got["restore"]
    assert code == 0 and json.loads(out)["restored"] == 2, out
    assert set(table_rows(sqlite_url)) == {"ok-0", "ok-1"}
    before = got["before"]
    assert before["gc"][:2] == [True, 0]
    for when in ("imported", "after"):
        state = got[when]
        changed = {k for k in before["env"].keys() | state["env"].keys() if before["env"].get(k) != state["env"].get(k)}
        assert changed == set(), f"{when}: environment variables changed: {sorted(changed)}"
        assert state["gc"] == before["gc"], f"{when}: the garbage collector was switched or frozen"
        assert state["none"] == before["none"], f"{when}: None put into sys.modules"
        assert state["pool"] == before["pool"], f"{when}: Arrow's default memory pool was left changed"


def test_an_app_that_imports_polars_works_with_dash_a(sqlite_url: str, tmp_path: Path) -> None:
    old_results(sqlite_url, 4)
    (tmp_path / "proj_app.py").write_text(textwrap.dedent(f'''
        import polars as pl
        from celery import Celery

        TOTALS = pl.DataFrame({{"n": [1, 2, 3]}}).select(pl.col("n").sum()).item()  # polars really works here
        assert TOTALS == 6
        app = Celery("proj", backend={sqlite_url!r})
        app.conf.result_expires = 30 * 24 * 3600
    '''))
    proc = cli("-A", "proj_app", "run", "--sink", str(tmp_path / "archive"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["selected"], report["deleted"]) == (4, 4) and table_rows(sqlite_url) == {}


def test_the_console_script_maps_large_blocks_and_in_process_callers_are_left_alone(sqlite_url: str, tmp_path: Path) -> None:
    """glibc's mmap threshold is fixed (so freed columns go back to the system) by the console
    script only: a command run in-process leaves the allocator's settings as they were."""
    probe = textwrap.dedent('''
        import sys
        from unittest import mock
        from click.testing import CliRunner
        from celery_archive.cli import base, main
        with mock.patch.object(base, "large_blocks_mapped") as mapped:
            CliRunner().invoke(main, ["run", "--source", sys.argv[1], "--sink", sys.argv[2], "--older-than", "30d"])
            in_process = mapped.call_count
            base.CONSOLE_SCRIPT = True
            CliRunner().invoke(main, ["verify", "--sink", sys.argv[2]])
        print(in_process, mapped.call_count, base.large_blocks_mapped())
    ''')
    old_results(sqlite_url, 2)
    proc = subprocess.run([sys.executable, "-c", probe, sqlite_url, str(tmp_path / "archive")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0", "1", "True"]  # glibc (Linux): mallopt answered
