"""A plain install (issue 14, item 10): `pip install celery-archive` runs the demo and the
query the demo suggests, and `stats` needs no --older-than (Celery's own default,
result_expires, one day, is the age)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import age_rows, celery_app, cli

# In one process, as a plain install would have it (a module of any distribution outside
# sys.argv[2], the core requirements, cannot be imported): the demo, then the query its last
# line suggests.
_PLAIN = """
import importlib.metadata as md, json, re, shlex, sys
allowed = set(json.loads(sys.argv[2]))
owners = md.packages_distributions()
norm = lambda d: re.sub(r"[-_.]+", "-", d).lower()

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.split(".")[0])
        if dists and not any(norm(d) in allowed for d in dists):
            raise ModuleNotFoundError(f"No module named {name!r} (not in a plain install)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from click.testing import CliRunner
from celery_archive.cli import main
demo = CliRunner().invoke(main, ["demo", "--dir", sys.argv[1]])
assert demo.exit_code == 0, (demo.output, demo.exception)
suggested = demo.output.strip().splitlines()[-1].split("|")[-1].strip()
query = CliRunner().invoke(main, shlex.split(suggested)[1:])
assert query.exit_code == 0, (query.output, query.exception)
print(json.dumps({"suggested": suggested, "output": query.output}))
"""


def _requirement_closure(dist: str) -> set[str]:
    """The distribution and everything it requires (without extras), as installed."""
    import importlib.metadata as md

    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;(]", todo.pop(), maxsplit=1)[0]).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [r for r in requires if "extra ==" not in r]
    return seen


def test_the_demo_and_its_query_need_only_core_dependencies(tmp_path: Path) -> None:
    core = _requirement_closure("celery-archive")
    assert "duckdb" in core
    proc = subprocess.run([sys.executable, "-c", _PLAIN, str(tmp_path / "demo"), json.dumps(sorted(core))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads(proc.stdout.strip().splitlines()[-1])
    assert audit["suggested"].startswith("celery-archive query --sink") and "row(s)" in audit["output"]


def test_stats_defaults_to_result_expires(sqlite_url: str) -> None:
    app = celery_app(sqlite_url)
    for i in range(6):
        app.backend.store_result(f"s{i}", i, "SUCCESS")
    age_rows(sqlite_url, 2, "task_id in ('s0', 's1', 's2')")
    out = cli("stats", "--source", sqlite_url, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["retention"], report["past_retention"], report["results"]) == ("1d", 3, 6)
    longer = json.loads(cli("stats", "--source", sqlite_url, "--result-expires", "3d", "--json").stdout)
    assert (longer["retention"], longer["past_retention"]) == ("3d", 0)
    text = cli("stats", "--source", sqlite_url)
    assert text.returncode == 0 and "past retention (1d) and not yet archived: 3" in text.stdout
