"""Who may read the pages: anyone on this machine when the server listens on loopback only;
otherwise whoever sends the token, as ``Authorization: Bearer TOKEN`` (scripts) or as the
password of HTTP Basic (browsers ask for it; the user name is not checked)."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from celery_archive.errors import ConfigError

TOKEN_ENV = "CELERY_ARCHIVE_SERVE_TOKEN"
MIN_TOKEN = 16  # characters: `openssl rand -hex 32` makes 64


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(token_file: Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The token from ``--token-file`` (its first line) or from $CELERY_ARCHIVE_SERVE_TOKEN."""
    env = os.environ if env is None else env
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
            mode = token_file.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(f"--token-file {token_file} can be read or written by every user: chmod 600 it")
        token, where = (text.splitlines() or [""])[0].strip(), f"--token-file {token_file}"
    elif env.get(TOKEN_ENV):
        token, where = env[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise ConfigError(f"the token in {where} is too short or holds spaces: use {MIN_TOKEN} or more characters "
                          "without spaces (openssl rand -hex 32 makes one)")
    return token


def check_bind(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is not a loopback address: anyone who can reach it could read the archive; "
                          f"give --token-file FILE (or set {TOKEN_ENV}) and every request must then carry "
                          "'Authorization: Bearer TOKEN', or keep the default --host 127.0.0.1")


def _presented(header: bytes) -> str | None:
    scheme, _, value = header.decode("latin-1").strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


class TokenAuth:
    """ASGI middleware: every HTTP request needs the token, or gets 401 (nothing else is read)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self._token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            token = _presented(given) if given else None
            if token is None or not hmac.compare_digest(token.encode(), self._token):
                body = b'{"error": "this archive needs a token: send Authorization: Bearer TOKEN"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Basic realm="celery-archive", charset="UTF-8"'),
                    (b"www-authenticate", b'Bearer realm="celery-archive"'),
                    (b"cache-control", b"no-store")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
