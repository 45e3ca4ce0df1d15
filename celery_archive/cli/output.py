"""What the CLI prints, without click: JSON lines, a failed command's report, and ``echo``,
which writes as ``click.echo`` does to the streams ``fast.py`` takes (text streams whose
encoding is not ASCII). The click commands and the restore that runs without click
(``fast.py``) print through these, so that both print the same bytes."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

INTERRUPTED = 130  # as a shell reports a process ended by SIGINT
INTERRUPTED_MESSAGE = ("stopped at once (a second SIGINT/SIGTERM): nothing unverified was deleted from the backend; "
                       "the next run finishes or cleans up what this one left")
_ANSI = r"\033\[[0-?]*[ -/]*[@-~]"  # click's: codes stripped when the stream is not a terminal


_I64, _U64 = -(1 << 63), (1 << 64) - 1  # orjson's integers


class _Orjson(Exception):
    """A value the standard library's json would not give exactly as orjson does."""


def _exact(value: Any) -> None:
    """Raise _Orjson unless ``value`` is made only of what json.dumps writes byte for byte as
    orjson.dumps does (checked for every code point in strings): dicts with str keys, lists,
    str, 64-bit ints, bools, None. Floats are not (their exponents are written otherwise)."""
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Orjson
            _exact(v)
    elif kind is list:
        for v in value:
            _exact(v)
    elif kind is int:
        if not _I64 <= value <= _U64:
            raise _Orjson
    elif value is not None and kind is not str and kind is not bool:
        raise _Orjson


def json_line(obj: dict[str, Any]) -> str:
    """What ``--json`` prints for one object (one line): orjson's bytes. The standard library
    writes them when it gives exactly those (``_exact``), so that a restore by id need not
    load orjson, which imports dataclasses and inspect (~10 ms of the command's start-up)."""
    try:
        _exact(obj)
    except (_Orjson, RecursionError):
        import orjson

        return orjson.dumps(obj).decode()
    import json

    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _no_float(_text: str) -> Any:
    raise _Orjson


def _int64(text: str) -> int:
    value = int(text)
    if not _I64 <= value <= _U64:
        raise _Orjson  # orjson reads it as a float
    return value


def json_value(text: str) -> Any:
    """``orjson.loads(text)``, by the standard library's json when that gives the same value:
    no floats, NaN or Infinity, integers of 64 bits, no escaped surrogates (orjson refuses a
    lone one); anything else, a syntax error included, is orjson's to read (or refuse)."""
    import re

    if not re.search(r"\\u[dD][89a-fA-F]", text):  # a surrogate escaped (or a backslash before "ud8...": orjson reads it)
        import json

        try:
            return json.loads(text, parse_float=_no_float, parse_int=_int64, parse_constant=_no_float)
        except Exception:  # noqa: BLE001 - orjson reads it below, or raises what it raises
            pass
    import orjson

    return orjson.loads(text)


def report_failure(command: str, error: str, error_type: str, code: int, as_json: bool, problems: list[str],
                   echo: Callable[..., Any]) -> None:
    """A failed command's report: one JSON object on stdout (``--json``), else ``error: ...`` on stderr."""
    if as_json:
        echo(json_line({"command": command, "ok": False, "error": error, "error_type": error_type, "exit_code": code,
                        "problems": problems}))
    else:
        echo(f"error: {error}", err=True)


def echo(message: str = "", err: bool = False) -> None:
    """``click.echo(message, err=err)`` for the streams ``fast.py`` takes."""
    stream = sys.stderr if err else sys.stdout
    out = message + "\n"
    if "\033" in out and not _isatty(stream):
        import re

        out = re.sub(_ANSI, "", out)
    stream.write(out)
    stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # noqa: BLE001 - as click: a stream that cannot say is not a terminal
        return False
