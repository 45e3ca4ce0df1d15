"""``celery-archive serve``: the read-only web pages and JSON API over an archive."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from celery_archive.cli.base import emit, handle_errors, json_option, main, sink_option
from celery_archive.errors import ArchiveError, ConfigError

if TYPE_CHECKING:
    import uvicorn

    from celery_archive.web.archive import Archive

DEFAULT_PORT = 8350


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio turns Nagle off only on such sockets; with it on, the body
    # waited ~40 ms for the client's delayed ACK of the headers on a kept-alive connection
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == 98 else f"cannot be used ({exc.strerror})"
        raise ConfigError(f"port {port} on {host} {why}: pick another --port (or --host)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _masking(archive_url: str, exc: ArchiveError) -> ArchiveError:
    """The same error with the sink URL's secrets masked (open_sink may name the URL as given)."""
    from celery_archive.web.archive import secrets_of

    text = str(exc)
    for secret in secrets_of(archive_url):
        text = text.replace(secret, "***")
    return type(exc)(text)


def open_archive(sink: str, refresh: float, cache_size: str) -> Archive:
    """The archive at ``sink``, read once (a listing of its runs) so that a wrong URL fails now."""
    from celery_archive.config import parse_size
    from celery_archive.sinks import open_sink
    from celery_archive.web.archive import Archive

    if refresh < 0:
        raise ConfigError(f"--refresh {refresh}: give 0 or more seconds")
    try:
        archive = Archive(open_sink(sink), sink, refresh, parse_size(cache_size))
        if archive.is_empty():
            raise ConfigError(f"no archive at {archive.url}: it holds no manifests or data files; check --sink "
                              "(`celery-archive run --sink URL ...` makes one)")
    except ArchiveError as exc:
        raise _masking(sink, exc) from None
    except Exception as exc:  # noqa: BLE001 - a storage client's own error, which may quote the URL as given
        raise _masking(sink, ConfigError(f"cannot read the archive at --sink: {type(exc).__name__}: {exc}")) from None
    return archive


def _server(archive: Archive, token: str | None) -> uvicorn.Server:
    import uvicorn

    from celery_archive.web.app import create_app

    config = uvicorn.Config(create_app(archive, token), log_level="warning", access_log=False, lifespan="off",
                            server_header=False, proxy_headers=False)
    return uvicorn.Server(config)


def _check(server: uvicorn.Server, sock: socket.socket, base: str, token: str | None) -> dict[str, Any]:
    """Serve in a thread, fetch /healthz and /, stop: what `--check` reports."""
    import urllib.request  # here: every command's start-up imports this module
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    out: dict[str, Any] = {}
    try:
        for path in ("/healthz", "/"):
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
                out[path] = {"status": resp.status, "bytes": len(body), "ms": round((time.perf_counter() - t0) * 1000, 1)}
    except OSError as exc:
        raise ArchiveError(f"the server at {base} did not answer: {exc}") from None
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return out


@main.command()
@sink_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; a non-loopback one needs a token.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on (0: any free one).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the token every request must send (Authorization: Bearer TOKEN, or as the "
                   "password of HTTP Basic in a browser). Default: $CELERY_ARCHIVE_SERVE_TOKEN.")
@click.option("--refresh", default=10.0, show_default=True, type=float, metavar="SECONDS",
              help="How long listings (runs, the index's files) are kept before they are read again.")
@click.option("--cache-size", default="256MiB", show_default=True, metavar="SIZE",
              help="Memory for what was read from the archive (index packs, data file footers and blocks).")
@click.option("--check", is_flag=True, help="Start, fetch /healthz and / once, print what they answered and stop.")
@json_option
@handle_errors("serve")
def serve(sink: str, host: str, port: int, token_file: Path | None, refresh: float, cache_size: str, check: bool,
          as_json: bool) -> None:
    """Serve read-only web pages and a JSON API over the archive: look a result up by id,
    browse runs. Listens on 127.0.0.1 unless told otherwise.

    \b
    celery-archive serve --sink /var/archive                      # http://127.0.0.1:8350
    celery-archive serve --sink s3://bucket/prefix --host 0.0.0.0 --token-file /etc/celery-archive/token
    """
    from celery_archive.web.auth import check_bind, load_token

    token = load_token(token_file)
    check_bind(host, token)
    archive = open_archive(sink, refresh, cache_size)
    sock = _bind(host, port)
    shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    base = f"http://{shown_host}:{sock.getsockname()[1]}"
    server = _server(archive, token)
    if check:  # asked of this machine: an any-address server answers on loopback too
        local = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(shown_host, shown_host)
        answers = _check(server, sock, f"http://{local}:{sock.getsockname()[1]}", token)
        if as_json:
            emit({"command": "serve", "ok": True, "url": base + "/", "sink": archive.url, "token": token is not None,
                  "answers": answers})
        else:
            click.echo(f"ok: served {base}/ over {archive.url}: " + ", ".join(
                f"{path} {a['status']} ({a['bytes']:,} bytes, {a['ms']} ms)" for path, a in answers.items()) + "; stopped")
        return
    if as_json:
        emit({"command": "serve", "url": base + "/", "sink": archive.url, "token": token is not None})
    else:
        click.echo(f"celery-archive serve: {base}/ over {archive.url} (read-only"
                   + ("; every request needs the token" if token else "") + "); Ctrl-C stops")
    server.run(sockets=[sock])
