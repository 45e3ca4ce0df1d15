"""``celery-archive restore ID... --sink URL [--json]`` without click: the console script's
commonest short command ("what did task X return") spends most of its time starting up, and
click with the command tree costs ~40 ms of it. Only that exact shape is taken here (ids, one
``--sink``, at most one ``--json``, in any order); anything else, ``--help`` included, goes to
the click command, which prints the same bytes and exits with the same codes for this shape
(tests/test_restore_imports.py runs both): both print through ``shown.py`` and ``output.py``."""

from __future__ import annotations

import os
import sys


def _plain_streams() -> bool:
    """stdout and stderr are text streams that click.echo writes to as they are (it rewraps
    those with an ASCII encoding, or none), and no shell completion is asked for."""
    import codecs

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if stream is None or not encoding or getattr(stream, "errors", None) is None:
            return False
        try:
            if codecs.lookup(encoding).name == "ascii":
                return False
        except LookupError:
            return False
    return not any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)


def restore_shape(argv: list[str]) -> tuple[list[str], str, bool] | None:
    """(task ids, sink, --json) when ``argv`` is ``restore ID... --sink URL [--json]`` (in any
    order, ``--sink=URL`` too), else None."""
    if not argv or argv[0] != "restore":
        return None
    ids: list[str] = []
    sink: str | None = None
    as_json = False
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--json" and not as_json:
            as_json = True
        elif arg == "--sink" and sink is None:
            sink = next(rest, None)
        elif arg.startswith("--sink=") and sink is None:
            sink = arg[len("--sink="):]
        elif arg.startswith("-"):
            return None
        else:
            ids.append(arg)
    if not ids or not sink or sink.startswith("-"):
        return None
    return ids, sink, as_json


def exit_now(code: int) -> None:
    """End the console script's process with ``code`` once its exit handlers have run and its
    output is flushed, without tearing the interpreter down: freeing every module and pyarrow's
    objects one by one costs a restore ~20 ms after it has printed everything. With another
    Python thread alive, or output that will not flush, the process exits as usual."""
    import atexit
    import threading

    if threading.active_count() == 1:
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        else:
            os._exit(code)
    sys.exit(code)


def restore_by_id(argv: list[str]) -> int | None:
    """Run ``argv`` (the arguments after the program's name) if it is a restore by id; its
    exit code, or None when it is anything else (the click command runs it)."""
    shape = restore_shape(argv)
    if shape is None or not _plain_streams():
        return None
    task_ids, url, as_json = shape
    import errno

    from celery_archive.cli.output import INTERRUPTED, INTERRUPTED_MESSAGE, echo, report_failure
    from celery_archive.errors import ArchiveError

    try:
        try:
            from celery_archive.cli.shown import print_records
            from celery_archive.sinks import open_sink

            filters = {"run_id": None, "since": None, "until": None, "names": ()}  # as the command has them
            print_records(open_sink(url), None, task_ids, filters, as_json, echo)  # no spool: as the command, by id
        except ArchiveError as exc:
            report_failure("restore", str(exc), type(exc).__name__, exc.exit_code, as_json, getattr(exc, "problems", []), echo)
            return exc.exit_code
        except KeyboardInterrupt:
            report_failure("restore", INTERRUPTED_MESSAGE, "Interrupted", INTERRUPTED, as_json, [], echo)
            return INTERRUPTED
    except OSError as exc:  # as click: a reader that went away (| head) ends the command quietly
        if exc.errno != errno.EPIPE:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())
        return 1
    return 0
