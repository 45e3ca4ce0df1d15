"""An archive for the web tests (results written by Celery's own DatabaseBackend, archived by
two real runs) and a real `celery-archive serve` process over it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from conftest import age_rows, celery_app, cli

SCRIPT = "<script>document.title='owned';alert('xss')</script>"
SCRIPT_ID = "xss-<b>bold</b>-1"  # an id with markup in it, as a custom task id may be


@dataclass(frozen=True)
class WebArchive:
    sink: Path
    source: str
    task_ids: list[str]
    failure_id: str
    group_id: str
    members: list[str]


def make_archive(root: Path) -> WebArchive:
    """Two runs: the demo's results (successes, failures, revoked, groups), then one holding
    markup in its name, args and result."""
    from celery.app.task import Context

    from celery_archive.demo import fill_backend

    url = f"db+sqlite:///{root / 'results.db'}"
    sink = root / "archive"
    fill_backend(url, 60)
    age_rows(url, 40)
    age_rows(url, 40, table="celery_tasksetmeta")
    out = cli("run", "--source", url, "--sink", str(sink), "--older-than", "30d")
    assert out.returncode == 0, out.stderr
    app = celery_app(url)
    req = Context(id=SCRIPT_ID, task="evil.<i>name</i>", args=["</pre><script>alert(1)</script>"], kwargs={"html": "<img src=x onerror=alert(2)>"},
                  hostname="w@h", retries=0, delivery_info={"routing_key": "celery"})
    app.backend.store_result(SCRIPT_ID, {"note": SCRIPT}, "SUCCESS", request=req)
    age_rows(url, 35, f"task_id = '{SCRIPT_ID}'")
    out = cli("run", "--source", url, "--sink", str(sink), "--older-than", "30d")
    assert out.returncode == 0, out.stderr
    ids = [f"demo-{i:05d}" for i in range(60) if i % 100 != 99]  # STARTED results are not finished: not archived
    return WebArchive(sink, url, ids, "demo-00007", "demo-group-010", [f"demo-{i:05d}" for i in range(10, 15)])


@dataclass
class Server:
    proc: subprocess.Popen[str]
    base: str


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`celery-archive serve ARGS --port 0 --json`, stopped after."""
    exe = Path(sys.executable).parent / "celery-archive"
    proc = subprocess.Popen([str(exe), "serve", *args, "--port", "0", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line, f"serve did not start: {proc.stderr.read()}"
        yield Server(proc, json.loads(line)["url"].rstrip("/"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> object:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _headers(items: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in items:  # a header sent twice (WWW-Authenticate) is one, joined
        out[k.lower()] = f"{out[k.lower()]}, {v}" if k.lower() in out else v
    return out


def get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return Answer(resp.status, _headers(resp.headers.items()), resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, _headers(exc.headers.items()), exc.read().decode())


class Fields(HTMLParser):
    """The heading and the (name, text) rows of a result page, as a reader sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.heading, self.rows, self.links = "", list[tuple[str, str]](), list[str]()
        self._in: str | None = None
        self._cell: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "h1" and a.get("id") == "heading":
            self._in = "h1"
        elif tag == "tr" and (a.get("id") or "").startswith("field-"):
            self.rows.append(("", ""))
            self._in = "tr"
        elif tag in ("th", "td") and self._in == "tr":
            self._cell = []
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")

    def handle_data(self, data: str) -> None:
        if self._in == "h1":
            self.heading += data
        elif self._in == "tr":
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1" and self._in == "h1":
            self._in = None
        elif tag == "th" and self._in == "tr":
            self.rows[-1] = ("".join(self._cell).strip(), "")
        elif tag == "td" and self._in == "tr":
            self.rows[-1] = (self.rows[-1][0], "".join(self._cell).strip())
        elif tag == "tr":
            self._in = None


def page_fields(html: str) -> Fields:
    p = Fields()
    p.feed(html)
    return p


def printed_fields(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The heading and (name, text) rows of `celery-archive restore ID` (one record)."""
    lines = text.rstrip("\n").split("\n")
    rows: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line.startswith(" " * 18) and rows:
            rows[-1] = (rows[-1][0], rows[-1][1] + "\n" + line[18:])
        else:
            rows.append((line[2:17].strip(), line[18:]))
    return lines[0], [(n, v.strip()) for n, v in rows]
