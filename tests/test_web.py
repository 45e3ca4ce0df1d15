"""`celery-archive serve` over HTTP, as a user's browser or script meets it: a real server
process over an archive that Celery's own backend filled and two real runs wrote."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import cli
from web_helpers import SCRIPT, SCRIPT_ID, Server, WebArchive, get, make_archive, page_fields, printed_fields, serving

PAGES = ["/", "/?q=demo-0000", "/runs", "/audit", "/healthz", "/api/runs", "/results/demo-00001", "/api/results/demo-00001",
         "/static/style.css", "/static/copy.js"]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebArchive:
    return make_archive(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def server(web: WebArchive) -> Iterator[Server]:
    with serving("--sink", str(web.sink)) as s:
        yield s


def _restore_json(web: WebArchive, task_id: str) -> dict[str, object]:
    out = cli("restore", task_id, "--sink", str(web.sink), "--json")
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    obj: dict[str, object] = json.loads(line)
    return obj


def test_result_page_shows_what_restore_prints(web: WebArchive, server: Server) -> None:
    for task_id in (web.failure_id, "demo-00001", "demo-00013", web.group_id, SCRIPT_ID):
        page = get(f"{server.base}/results/{quote(task_id, safe='')}")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        out = cli("restore", task_id, "--sink", str(web.sink))
        assert out.returncode == 0, out.stderr
        heading, rows = printed_fields(out.stdout)
        shown = page_fields(page.body)
        assert " ".join(shown.heading.split()) == " ".join(heading.split())
        assert shown.rows == rows, task_id
    failure = dict(page_fields(get(f"{server.base}/results/{web.failure_id}").body).rows)
    assert "ValueError" in failure["traceback"] and "card declined for order-7" in failure["result"]


def test_api_result_is_the_object_restore_json_prints(web: WebArchive, server: Server) -> None:
    for task_id in (web.failure_id, web.group_id, SCRIPT_ID):
        answer = get(f"{server.base}/api/results/{quote(task_id, safe='')}")
        assert answer.status == 200 and answer.headers["content-type"] == "application/json"
        assert answer.json() == _restore_json(web, task_id)
    missing = get(f"{server.base}/api/results/no-such-task")
    assert missing.status == 404
    out = cli("restore", "no-such-task", "--sink", str(web.sink), "--json")
    assert missing.json() == json.loads(out.stdout.strip().splitlines()[0]) == {
        "command": "restore", "found": False, "task_id": "no-such-task", "error": "not in the archive"}


def test_search_by_id_and_by_prefix(web: WebArchive, server: Server) -> None:
    exact = get(f"{server.base}/?q={web.failure_id}")
    assert exact.status == 303 and exact.headers["location"] == f"/results/{web.failure_id}"
    unique = get(f"{server.base}/?q=demo-group-01")  # demo-group-010 and -015
    assert unique.status == 200
    assert re.findall(r'href="/results/(demo-group-01\d)"', unique.body) == ["demo-group-010", "demo-group-015"]
    ten = get(f"{server.base}/?q=demo-0005")  # demo-00050 ... demo-00059
    assert re.findall(r'href="/results/(demo-0005\d)"', ten.body) == [f"demo-0005{i}" for i in range(10)]
    only = get(f"{server.base}/?q=xss-")
    assert only.status == 303 and only.headers["location"] == f"/results/{quote(SCRIPT_ID, safe='')}"
    none = get(f"{server.base}/?q=zzz-nothing")
    assert none.status == 404 and "Not in the archive" in none.body and "zzz-nothing" in none.body
    home = get(f"{server.base}/")
    assert home.status == 200
    assert ">2<" in home.body.replace(" ", "")  # two runs
    total = sum(r["rows"] for r in json.loads(cli("runs", "--sink", str(web.sink), "--json").stdout)["runs"])
    assert f"{total:,}" in home.body


def test_run_link_runs_and_api_runs_match_the_runs_command(web: WebArchive, server: Server) -> None:
    listed = json.loads(cli("runs", "--sink", str(web.sink), "--json").stdout)["runs"]
    api = get(f"{server.base}/api/runs").json()
    assert isinstance(api, dict) and [{k: r[k] for k in listed[0]} for r in api["runs"]] == listed
    assert all(r["verified"] == r["rows"] and r["state"] == "purged" for r in api["runs"])
    record = _restore_json(web, web.failure_id)
    page = get(f"{server.base}/results/{web.failure_id}")
    link = f"/runs/{record['run_id']}"
    assert f'href="{link}"' in page.body
    run = get(server.base + link)
    assert run.status == 200 and str(record["run_id"]) in run.body and "purged" in run.body
    assert str(record["archive_key"]) in run.body  # its file is listed
    runs = get(f"{server.base}/runs")
    assert all(r["run_id"] in runs.body for r in listed)
    assert get(f"{server.base}/runs/20990101T000000Z-000000").status == 404
    detail = get(f"{server.base}/api/runs/{record['run_id']}").json()
    assert isinstance(detail, dict) and detail["manifest"]["run_id"] == record["run_id"]


def test_group_lists_its_members_as_links(web: WebArchive, server: Server) -> None:
    page = get(f"{server.base}/results/{web.group_id}")
    children = re.search(r'<ul class="ids children">(.*?)</ul>', page.body, re.S)
    assert children and re.findall(r'href="/results/([^"]+)"', children.group(1)) == web.members
    for member in web.members:
        assert get(f"{server.base}/results/{member}").status == 200


def test_restore_command_shown_puts_it_back(web: WebArchive, server: Server) -> None:
    """The copyable command, run as it is, puts the purged result back into its backend."""
    import html
    import shlex

    from conftest import celery_app

    assert celery_app(web.source).AsyncResult("demo-00001").state == "PENDING"  # purged by the run
    page = get(f"{server.base}/results/demo-00001")
    command = html.unescape(re.search(r'data-copy="([^"]*)"', page.body).group(1))  # type: ignore[union-attr]
    assert command in html.unescape(page.body.split('class="copy-source"', 1)[1])  # shown as well (no JS needed)
    argv = shlex.split(command)
    assert argv == ["celery-archive", "restore", "demo-00001", "--sink", str(web.sink), "--into", web.source]
    out = cli(*argv[1:])
    assert out.returncode == 0 and "restored 1 of 1" in out.stdout, out.stderr
    assert celery_app(web.source).AsyncResult("demo-00001").result["order"] == 1


def test_everything_is_escaped(server: Server) -> None:
    page = get(f"{server.base}/results/{quote(SCRIPT_ID, safe='')}")
    assert page.status == 200
    for raw in (SCRIPT, "<b>bold</b>", "<i>name</i>", "<script>alert(1)</script>", "<img src=x"):
        assert raw not in page.body
    assert "&lt;script&gt;document.title=" in page.body and "xss-&lt;b&gt;bold&lt;/b&gt;-1" in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script runs even so
    search = get(f"{server.base}/?q={quote('<script>x</script>')}")
    assert "<script>x" not in search.body and "&lt;script&gt;x" in search.body


def test_audit_page_shows_the_audit_log(server: Server) -> None:
    page = get(f"{server.base}/audit")
    assert page.status == 200 and 'id="audit"' in page.body and 'href="/runs"' in page.body
    assert "<td>run</td>" in page.body and "<td>purge</td>" in page.body and "manifest_sha256=" in page.body


def test_healthz_and_headers(server: Server) -> None:
    health = get(f"{server.base}/healthz")
    assert health.status == 200 and health.json() == {"ok": True, "sink": health.json()["sink"], "runs": 2}  # type: ignore[index]
    for path in PAGES:
        a = get(server.base + path)
        assert a.status == 200, path
        assert a.headers["cache-control"] == "no-store" and a.headers["x-content-type-options"] == "nosniff"
        assert re.fullmatch(r"app;dur=\d+\.\d\d", a.headers["server-timing"])
        assert "http://" not in a.body.replace(server.base, "") and "https://" not in a.body  # nothing from elsewhere
    assert get(f"{server.base}/nothing-here").status == 404
    assert get(f"{server.base}/api/nothing").json() == {"error": "no such page: /api/nothing"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_nothing_can_be_changed_through_it(web: WebArchive, server: Server) -> None:
    before = _tree(web.sink)
    for path in [*PAGES, "/runs/x", "/api/results/demo-00001"]:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            a = get(server.base + path, method=method)
            assert a.status == 405 and a.headers["allow"] == "GET, HEAD", (method, path)
        assert get(server.base + path, method="HEAD").status == (404 if path == "/runs/x" else 200)
    assert _tree(web.sink) == before


def test_a_token_guards_every_page(web: WebArchive, tmp_path: Path) -> None:
    import base64

    token_file = tmp_path / "token"
    token_file.write_text("t0k3n-" + "x" * 26 + "\n")
    token_file.chmod(0o600)
    token = token_file.read_text().strip()
    with serving("--sink", str(web.sink), "--token-file", str(token_file)) as s:
        for path in PAGES:
            bare = get(s.base + path)
            assert bare.status == 401 and "Bearer" in bare.body and "basic" in bare.headers["www-authenticate"].lower(), path
            assert get(s.base + path, headers={"Authorization": "Bearer wrong-" + "y" * 26}).status == 401
            assert get(s.base + path, headers={"Authorization": f"Bearer {token}"}).status == 200, path
            basic = base64.b64encode(f"anyone:{token}".encode()).decode()
            assert get(s.base + path, headers={"Authorization": f"Basic {basic}"}).status == 200, path
        assert token not in get(s.base + "/", headers={"Authorization": f"Bearer {token}"}).body


def test_a_host_beyond_loopback_needs_a_token(web: WebArchive, tmp_path: Path) -> None:
    out = cli("serve", "--sink", str(web.sink), "--host", "0.0.0.0", "--port", "0", "--check")
    assert out.returncode == 2 and "--host 0.0.0.0 is not a loopback address" in out.stderr and "--token-file" in out.stderr
    env = {**os.environ, "CELERY_ARCHIVE_SERVE_TOKEN": "e" * 32}
    out = cli("serve", "--sink", str(web.sink), "--host", "0.0.0.0", "--port", "0", "--check", "--json", env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["token"] is True and report["answers"]["/healthz"]["status"] == 200
    short = {**os.environ, "CELERY_ARCHIVE_SERVE_TOKEN": "short"}
    out = cli("serve", "--sink", str(web.sink), "--check", env=short)
    assert out.returncode == 2 and "too short" in out.stderr and "short" not in out.stderr.replace("too short", "")
    loose = tmp_path / "loose"
    loose.write_text("z" * 32)
    loose.chmod(0o644)
    out = cli("serve", "--sink", str(web.sink), "--token-file", str(loose), "--check")
    assert out.returncode == 2 and "chmod 600" in out.stderr


def test_check_serves_once_and_stops(web: WebArchive) -> None:
    out = cli("serve", "--sink", str(web.sink), "--port", "0", "--check")
    assert out.returncode == 0, out.stderr
    assert re.match(r"ok: served http://127\.0\.0\.1:\d+/ over .+: /healthz 200 .*, / 200 .*; stopped", out.stdout)
    empty = cli("serve", "--sink", str(web.sink.parent / "nothing-here"), "--check")
    assert empty.returncode == 2 and "no archive at" in empty.stderr
