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


def json_line(obj: dict[str, Any]) -> str:
    """What ``--json`` prints for one object (one line)."""
    import orjson

    return orjson.dumps(obj).decode()


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
