"""The ASGI application: routes (GET only), templates, the package's own static files, the
token check and the headers every response carries."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_archive.web import views
from celery_archive.web.auth import TokenAuth

if TYPE_CHECKING:
    from celery_archive.web.archive import Archive

# the pages load nothing from elsewhere and run no inline script: a <script> that got into a
# page through a value (it cannot: everything is escaped) would not run either
_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class Headers:
    """ASGI middleware: security headers, ``Cache-Control: no-store`` (pages can hold task
    data) and ``Server-Timing: app;dur=MS``, the time the server spent on the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                message["headers"] = [*headers, *_HEADERS, (b"cache-control", b"no-store"),
                                      (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, sending)


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("celery_archive.web", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["size"] = human_bytes
    env.filters["num"] = lambda n: "" if n is None else f"{n:,}"
    return env


def create_app(archive: Archive, token: str | None = None) -> Starlette:
    """The read-only web application over ``archive``; with ``token``, every request needs it."""
    get = ["GET"]  # HEAD is answered for every GET route
    routes = [
        Route("/", views.home, methods=get),
        Route("/results/{task_id:path}", views.result_page, methods=get),
        Route("/runs", views.runs_page, methods=get),
        Route("/runs/{run_id}", views.run_page, methods=get),
        Route("/audit", views.audit_page, methods=get),
        Route("/api/results/{task_id:path}", views.result_api, methods=get),
        Route("/api/runs", views.runs_api, methods=get),
        Route("/api/runs/{run_id}", views.run_api, methods=get),
        Route("/healthz", views.healthz, methods=get),
        Mount("/static", StaticFiles(packages=[("celery_archive.web", "static")]), name="static"),
    ]
    middleware = [Middleware(Headers)]
    if token is not None:
        middleware.append(Middleware(TokenAuth, token=token))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={Exception: views.failed,
                                                                              404: views.not_found, 405: views.not_allowed})
    state: Any = app.state
    state.archive, state.templates = archive, templates()
    return app
