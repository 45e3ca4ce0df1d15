"""Celery's Redis ``result_backend`` URLs: checked, redacted, and turned into a redis-py client.

redis-py reads a URL leniently: ``redis://host:6379/abc`` silently means database 0, and an
option it does not know reaches the connection class, which fails at the first command with a
TypeError. Here every part is checked first, so a typo is a ConfigError (exit 2) that names it.
Options are a small table by scheme, which later options join.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from celery_archive.backends import REDIS_SCHEMES
from celery_archive.errors import ConfigError


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


def _cert_reqs(value: str) -> ssl.VerifyMode:
    """Celery's ssl_cert_reqs forms: CERT_REQUIRED / CERT_OPTIONAL / CERT_NONE or required / optional / none."""
    forms = {"CERT_REQUIRED": ssl.CERT_REQUIRED, "CERT_OPTIONAL": ssl.CERT_OPTIONAL, "CERT_NONE": ssl.CERT_NONE,
             "required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    if value not in forms:
        raise ValueError("use required, optional or none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)")
    return forms[value]


def _number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"use a{'n integer' if kind is int else ' number'}") from None  # not chained: the cause would repeat the URL, password included

    return parse


# option -> parser, for every Redis scheme (passed on to redis-py's connection)
OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": _number(float), "socket_connect_timeout": _number(float), "socket_keepalive": _bool,
    "retry_on_timeout": _bool, "health_check_interval": _number(int), "max_connections": _number(int),
    "client_name": str, "protocol": _number(int),
}
# rediss:// only (TLS), as Celery's RedisBackend reads them
SSL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _cert_reqs, "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str, "ssl_check_hostname": _bool,
}


def redact(url: str) -> str:
    """``url`` (or each ``;``-separated sentinel URL) with any password replaced by ``***``."""
    out = []
    for part in url.split(";"):
        p = urlsplit(part)
        if p.password is not None:
            host_port = p.netloc.rpartition("@")[2]
            part = p._replace(netloc=f"{p.username or ''}:***@{host_port}").geturl()
        out.append(part)
    return ";".join(out)


def _bad(url: str, problem: str) -> ConfigError:
    return ConfigError(f"Redis URL {redact(url)!r}: {problem}")


def _db(url: str, text: str, where: str) -> int:
    digits = text.strip("/") if where == "path" else text
    if where == "path" and text.count("/") > 1:
        raise _bad(url, f"the path {text!r} is not a database number: use /0 ... /15 (e.g. redis://host:6379/0)")
    if digits == "":
        return 0
    if not digits.isdigit():
        raise _bad(url, f"the database {digits!r} is not a number: use /0 ... /15 (e.g. redis://host:6379/0)")
    return int(digits)


def _options(url: str, query: str, allowed: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            if name in SSL_OPTIONS:
                tls = "rediss+cluster" if url.startswith("redis+cluster:") else "rediss"
                raise _bad(url, f"{name} needs a TLS connection: use {tls}:// (as Celery requires)")
            raise _bad(url, f"unknown option {name!r}; known: {', '.join(sorted(allowed))}")
        try:
            out[name] = allowed[name](value)
        except ValueError as exc:
            raise _bad(url, f"{name}={value!r}: {exc}") from None  # not chained: the cause would repeat the URL, password included
    return out


def connect(url: str, master_name: str | None = None) -> Any:
    """A redis-py client for a Celery Redis URL (nothing is sent yet); ConfigError names a bad part."""
    import redis

    p = urlsplit(url.split(";")[0])
    if p.scheme not in REDIS_SCHEMES or p.scheme.endswith("+cluster"):  # a cluster's: cluster/__init__.py
        raise ConfigError(f"not a Celery Redis backend URL: {redact(url)!r} (expected redis://, rediss://, redis+socket:// or sentinel://)")
    password = unquote(p.password) if p.password else None
    username = unquote(p.username) if p.username else None
    if p.scheme == "redis+socket":
        opts = _options(url, p.query, {**OPTIONS, "virtual_host": _number(int), "db": _number(int)})
        db = opts.pop("virtual_host", opts.pop("db", 0))
        return redis.Redis(unix_socket_path=unquote(p.path), db=db, password=password, username=username, **opts)
    if p.scheme == "sentinel":
        from redis.sentinel import Sentinel

        if not master_name:
            raise ConfigError("a sentinel:// source needs --master-name (Celery's result_backend_transport_options['master_name'])")
        hosts = []
        for part in url.split(";"):
            q = urlsplit(part)
            _options(url, q.query, OPTIONS)
            hosts.append((q.hostname or "localhost", _port(url, q, 26379)))
        opts = _options(url, p.query, OPTIONS)
        sentinel = Sentinel(hosts, password=password)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
        return sentinel.master_for(master_name, db=_db(url, p.path, "path"), **opts)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
    allowed = {**OPTIONS, **(SSL_OPTIONS if p.scheme == "rediss" else {}), "db": _number(int)}
    opts = _options(url, p.query, allowed)
    db = opts.pop("db", None)
    db = _db(url, p.path, "path") if db is None else db
    if p.scheme == "rediss":
        opts["ssl"] = True
    return redis.Redis(host=p.hostname or "localhost", port=_port(url, p, 6379), db=db, username=username, password=password, **opts)


def _port(url: str, p: Any, default: int) -> int:
    try:
        port = p.port
    except ValueError:
        raise _bad(url, "the port is not a number from 1 to 65535") from None  # not chained: the cause would repeat the URL, password included
    return int(port) if port else default
