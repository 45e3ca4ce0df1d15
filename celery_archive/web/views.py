"""The pages and the JSON API. Every handler only reads; every page is rendered by Jinja2
with escaping on, and every body has the sink URL's secrets masked before it leaves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from celery_archive.errors import ArchiveError
from celery_archive.web import present

if TYPE_CHECKING:
    from celery_archive.web.archive import Archive

LATEST = 10  # runs on the home page
MATCHES = 50  # ids listed for a prefix


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _masked(archive: Archive, text: str) -> str:
    for secret in archive.secrets:
        text = text.replace(secret, "***")
    return text


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    archive = _archive(request)
    html = request.app.state.templates.get_template(template).render(sink=archive.url, **context)
    return Response(_masked(archive, html), status, media_type="text/html; charset=utf-8")


def api(request: Request, obj: Any, status: int = 200) -> Response:
    return Response(_masked(_archive(request), orjson.dumps(obj).decode()), status, media_type="application/json")


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/healthz"


def home(request: Request) -> Response:
    archive = _archive(request)
    q = request.query_params.get("q", "").strip()
    matches: list[str] = []
    more = False
    if q:
        if archive.results(q):
            return RedirectResponse(f"/results/{quote(q, safe='')}", 303)
        matches, more = archive.id_index.prefixed(q, MATCHES)
        if len(matches) == 1 and not more:
            return RedirectResponse(f"/results/{quote(matches[0], safe='')}", 303)
    runs = archive.runs()
    return page(request, "home.html", 404 if q and not matches else 200, q=q, matches=matches, more=more,
                latest=runs[::-1][:LATEST], totals=archive.totals())


def result_page(request: Request) -> Response:
    archive = _archive(request)
    task_id = request.path_params["task_id"]
    records = archive.results(task_id)
    if not records:
        return page(request, "missing.html", 404, task_id=task_id)
    shown = [{"heading": present.heading(r), "kind": r["kind"], "task_id": r["task_id"], "status": r["status"],
              "name": r["name"], "fields": list(present.fields(r)), "children": present.children(r),
              "run_id": r["run_id"], "restore": present.restore_command(r, archive.url)}
             for r in records]
    return page(request, "result.html", task_id=task_id, records=shown)


def runs_page(request: Request) -> Response:
    archive = _archive(request)
    return page(request, "runs.html", runs=archive.runs()[::-1], totals=archive.totals())


def run_page(request: Request) -> Response:
    archive = _archive(request)
    found = archive.run(request.path_params["run_id"])
    if found is None:
        return page(request, "missing_run.html", 404, run_id=request.path_params["run_id"])
    run, manifest = found
    return page(request, "run.html", run=run, manifest=manifest)


def audit_page(request: Request) -> Response:
    from celery_archive.archive.audit import events

    shown = [{"time": e["time"], "event": e["event"], "who": e["who"], "pid": e["pid"], "version": e["version"],
              "fields": [(k, v) for k, v in sorted(e.items()) if k not in AUDIT_OWN and v is not None]}
             for e in events(_archive(request).sink)]
    return page(request, "audit.html", events=shown[::-1])


AUDIT_OWN = ("event", "time", "who", "pid", "version")


def result_api(request: Request) -> Response:
    archive = _archive(request)
    task_id = request.path_params["task_id"]
    kind = request.query_params.get("kind")
    records = [r for r in archive.results(task_id) if kind in (None, r["kind"])]
    if not records:
        return api(request, {"command": "restore", "found": False, "task_id": task_id, "error": "not in the archive"}, 404)
    return api(request, present.as_json(records[0]))


def runs_api(request: Request) -> Response:
    archive = _archive(request)
    return api(request, {"command": "runs", "sink": archive.url, "runs": [r.to_json() for r in archive.runs()]})


def run_api(request: Request) -> Response:
    archive = _archive(request)
    found = archive.run(request.path_params["run_id"])
    if found is None:
        return api(request, {"error": f"no committed run {request.path_params['run_id']!r} in the archive"}, 404)
    run, manifest = found
    return api(request, {**run.to_json(), "manifest": manifest})


def healthz(request: Request) -> Response:
    archive = _archive(request)
    runs = archive.runs()  # one listing (cached): the archive can be read
    return api(request, {"ok": True, "sink": archive.url, "runs": len(runs)})


async def failed(request: Request, exc: Exception) -> Response:
    """An archive that cannot be read (or a bug): the message, masked; never a traceback."""
    if isinstance(exc, ArchiveError):
        message = str(exc)
    else:
        text = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    if _wants_json(request):
        return api(request, {"ok": False, "error": message, "error_type": type(exc).__name__}, 500)
    return page(request, "error.html", 500, message=message)


async def not_found(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return api(request, {"error": f"no such page: {request.url.path}"}, 404)
    return page(request, "error.html", 404, message=f"no such page: {request.url.path}")


async def not_allowed(request: Request, exc: Exception) -> Response:
    body = {"error": f"{request.method} is not allowed: this server only reads the archive (GET)"}
    return Response(orjson.dumps(body), 405, headers={"Allow": "GET, HEAD"}, media_type="application/json")
