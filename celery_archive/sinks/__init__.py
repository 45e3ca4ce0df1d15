"""Archive storage behind one small contract (``base.Sink``), picked by URL scheme: a
directory (``local``) or S3 (``s3``, its URL options in ``s3_options``). Add a sink by one module
that implements the contract and passes ``tests/test_sink_contract.py``, and one branch here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from celery_archive.errors import ConfigError
from celery_archive.sinks.base import ObjectInfo, RangeReader, Sink, download

__all__ = ["LOCAL_OPTIONS", "ObjectInfo", "RangeReader", "Sink", "download", "local_options", "open_sink"]


LOCAL_OPTIONS: dict[str, Callable[[str], Any]] = {"encrypt": str}
"""Query options a local sink (a path or file://) takes, name -> parser: ``encrypt`` (every sink
takes it: crypto/). An option not in this table is refused, so a typo is never silently ignored."""


def _encrypted(sink: Any, value: str | None) -> Sink:
    """``sink`` with the URL's ``encrypt=keyfile:PATH`` / ``encrypt=kms:KEY`` (None: not encrypted)."""
    if value is not None:
        from celery_archive.crypto import Encryption

        sink.encryption = Encryption(value)
    return sink  # type: ignore[no-any-return]


def _split_encrypt(query: str) -> tuple[str | None, str]:
    """(``encrypt`` option or None, the rest of the query)."""
    from urllib.parse import urlencode

    pairs = parse_qsl(query, keep_blank_values=True)
    values = [v for k, v in pairs if k == "encrypt"]
    if len(values) > 1:
        raise ConfigError("sink option encrypt is given more than once: give one master key")
    return (values[0] if values else None), urlencode([(k, v) for k, v in pairs if k != "encrypt"])


def local_options(url: str, query: str) -> dict[str, Any]:
    """The local sink options in ``query``, each checked; ConfigError names an unknown one."""
    out: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in LOCAL_OPTIONS:
            known = f"known: {', '.join(sorted(LOCAL_OPTIONS))}" if LOCAL_OPTIONS else "a local sink takes none"
            raise ConfigError(f"unknown option {name!r} in --sink {url!r} ({known}); a '?' that is part of a directory's "
                              "name is written %3F in a file:///path URL")
        out[name] = LOCAL_OPTIONS[name](value)
    return out


def open_sink(url: str) -> Sink:
    """A sink for ``url``: a filesystem path, a ``file://`` URL, or ``s3://bucket/prefix``.

    Options are a URL's query (``?name=value&...``). A plain path is taken as it is when it
    names an existing directory (whose name may hold a ``?``); otherwise what follows its
    first ``?`` is read as options, as in a ``file://`` URL, and checked."""
    from celery_archive.sinks.local import LocalSink

    if not url:
        raise ConfigError("--sink is empty: give a directory path, file:///path or s3://bucket/prefix")
    parts = urlsplit(url)
    if "@" in parts.netloc:  # the message must not repeat the URL: it would print the secret
        raise ConfigError(f"--sink {parts.scheme or 'file'}:// URL holds credentials (user:secret@ before the bucket or host): "
                          "celery-archive never takes a secret in a URL; give S3 credentials as boto3 finds them "
                          "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials with AWS_PROFILE, an instance role)")
    if parts.scheme == "s3":
        from celery_archive.sinks.s3 import S3Sink
        from celery_archive.sinks.s3_options import S3Options

        encrypt, query = _split_encrypt(parts.query)
        return _encrypted(S3Sink(parts.netloc, unquote(parts.path), options=S3Options.from_query(query)), encrypt)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file:// URL with host {parts.netloc!r}: use file:///absolute/path")
        if not parts.path:
            raise ConfigError(f"--sink {url!r} names no directory: use file:///absolute/path")
        opts = local_options(url, parts.query)
        return _encrypted(LocalSink(Path(unquote(parts.path))), opts.get("encrypt"))
    if parts.scheme in ("", ) or len(parts.scheme) == 1:  # plain path (or a Windows drive letter)
        if "?" in url and not Path(url).expanduser().is_dir():
            path, _, query = url.partition("?")
            opts = local_options(url, query)
            return _encrypted(LocalSink(Path(path)), opts.get("encrypt"))
        return LocalSink(Path(url))
    raise ConfigError(
        f"unsupported sink scheme {parts.scheme!r}: use a directory path, file:///path or s3://bucket/prefix"
    )
