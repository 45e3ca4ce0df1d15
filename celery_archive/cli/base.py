"""The ``celery-archive`` command. Stages never print; this module does.

Exit codes: 0 done; 1 failed (source, sink or other error); 2 bad usage or configuration;
3 verification failed and nothing was deleted; 4 another run holds the archive's lease (or the
backend's archiver lock), or this run lost the lease; 5 a task id asked for is not in the
archive; 6 a result to restore is already in the backend (--on-conflict fail) and nothing was
restored; 7 stats --warn-above exceeded; 130 stopped at once by a second SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from celery_archive.cli.output import INTERRUPTED, INTERRUPTED_MESSAGE, json_line, report_failure
from celery_archive.errors import ArchiveError
from celery_archive.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on one line instead of text.")
SINK_HELP = "Archive location: a directory path, file:///path or s3://bucket/prefix[?options] (see the README)."
sink_option = click.option("--sink", required=True, metavar="URL", envvar="CELERY_ARCHIVE_SINK", show_envvar=True, help=SINK_HELP)


def emit(obj: dict[str, Any]) -> None:
    click.echo(json_line(obj))


def fail(command: str, error: str, error_type: str, code: int, as_json: bool, problems: list[str]) -> NoReturn:
    report_failure(command, error, error_type, code, as_json, problems, click.echo)
    sys.exit(code)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT ask for a safe stop (the event is set: a run takes nothing more and
    finishes what it took, releasing the lease); a second one stops at once."""
    import signal

    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(f"celery-archive: {signal.Signals(signum).name}: stopping at the next batch boundary "
                   "(what was taken is archived, verified and purged; send it again to stop at once)", err=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def system_allocator() -> Iterator[None]:
    """Arrow's default allocator (mimalloc) keeps memory it freed, so a long run's peak RSS
    grows with what it ever held at once; the commands that stream many records allocate
    through the system allocator instead (benchmarks/bench_sql.py reports the peak).

    Arrow picks its allocator once, from ARROW_DEFAULT_MEMORY_POOL, when it is first asked
    for one: so if pyarrow is not loaded yet, it is loaded here with that variable set for the
    moment it takes, and the environment is as it was before anything else runs. If pyarrow is
    loaded already (an -A app loaded it), its Python-side default pool is switched for the
    command and put back afterwards. A pool the user chose (the variable set) stands."""
    import os

    name = "ARROW_DEFAULT_MEMORY_POOL"
    if CONSOLE_SCRIPT:
        large_blocks_mapped()
    if os.environ.get(name):
        yield
        return
    if "pyarrow" not in sys.modules:
        os.environ[name] = "system"
        try:
            import pyarrow as pa

            pa.default_memory_pool()  # the choice is made now, once for the process
        finally:
            del os.environ[name]
        yield
        return
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


CONSOLE_SCRIPT = False  # set by the console script (cli.entry): nothing runs in its process after the command

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def large_blocks_mapped(threshold: int = 1 << 20) -> bool:
    """glibc's malloc serves a block of ``threshold`` bytes or more by mmap, so that freeing it
    gives the memory back to the system, from here on. By default glibc raises that threshold
    to the largest block freed so far (up to 32 MiB): after the first Arrow column of a few
    MiB is freed, later ones come from the heap, which fragments and never shrinks, so that a
    long run's peak RSS grew with the number of results it read (benchmarks/bench_redis.py
    --memory: 267 MiB for 100,000 Redis results, 407 MiB for 1,000,000). A fixed threshold also
    ends that adjustment. A setting of the whole process, so only the console script makes it
    (its process ends with the command); elsewhere (not glibc), nothing happens."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


@contextlib.contextmanager
def frozen_once_started() -> Iterator[Callable[[], None]]:
    """A run's libraries (SQLAlchemy, pyarrow, a driver: objects that live as long as the
    process) are loaded by its first batch; calling the yielded function then moves them out of
    the cycle collector's way (gc.freeze) for the rest of the run, and leaving puts them back
    (gc.unfreeze), so the collector is as it was for whoever called the command in-process.
    Only what was frozen here is unfrozen; the console script's process ends with the command,
    and unfreezing there would only make its exit collect every library object once more."""
    import gc

    frozen = False

    def started() -> None:
        nonlocal frozen
        if not frozen and gc.isenabled() and gc.get_freeze_count() == 0:
            gc.freeze()
            frozen = True

    try:
        yield started
    finally:
        if frozen and not CONSOLE_SCRIPT:  # the console script's process ends now: its exit need not collect them all
            gc.unfreeze()


def handle_errors(command: str, heavy: bool = False) -> Callable[[F], F]:
    """Turn an ArchiveError into a clear message (or a JSON object) and its exit code;
    ``heavy`` commands (those streaming records) run on the system allocator."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                if heavy:
                    with system_allocator():
                        return fn(*args, **kwargs)
                return fn(*args, **kwargs)
            except ArchiveError as exc:
                fail(command, str(exc), type(exc).__name__, exc.exit_code, kwargs.get("as_json", False), getattr(exc, "problems", []))
            except KeyboardInterrupt:
                fail(command, INTERRUPTED_MESSAGE, "Interrupted", INTERRUPTED, kwargs.get("as_json", False), [])

        return inner  # type: ignore[return-value]

    return wrap


@contextlib.contextmanager
def progress_reporter(as_json: bool) -> Iterator[Callable[[int], None]]:
    """Progress of a long run on stderr: a live counter on a terminal, a log line every 10 s
    (CELERY_ARCHIVE_PROGRESS_EVERY) otherwise (cron, systemd, CI logs)."""
    import os

    every = float(os.environ.get("CELERY_ARCHIVE_PROGRESS_EVERY", "10"))
    started = last = time.monotonic()
    if sys.stderr.isatty() and not as_json:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("taking results", total=None)

            def show(n: int) -> None:
                rate = n / max(time.monotonic() - started, 1e-9)
                bar.update(task, description=f"{n:,} results taken ({rate:,.0f}/s)")

            yield show
        return

    def log(n: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every:
            last = now
            click.echo(f"celery-archive: {n:,} results taken in {now - started:,.0f} s ({n / (now - started):,.0f}/s)", err=True)

    yield log


def newest_line(newest: dict[str, str] | None, now: str, what: str) -> str:
    """The newest result a selection takes, its date_done as stored and as read, beside now:
    a cutoff read in the wrong zone shows here before anything is deleted."""
    if newest is None:
        return f"  newest that {what}: none (now {now})"
    import datetime as dt

    age = dt.datetime.fromisoformat(now.replace("Z", "+00:00")) - dt.datetime.fromisoformat(newest["utc"].replace("Z", "+00:00"))
    mins = int(age.total_seconds() // 60)
    return (f"  newest that {what}: task {newest['task_id']}, date_done stored {newest['stored']!r}, read as "
            f"{newest['utc']} ({mins // 60}h {mins % 60:02d}m before now, {now})")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# Which module registers which command on ``main``: a command's module is imported when the
# command is asked for, so that ``celery-archive restore`` loads restore's code only, not the
# run's or the server's (help and completion list them all).
COMMAND_MODULES = {
    "verify": "celery_archive.cli.archive", "runs": "celery_archive.cli.archive", "demo": "celery_archive.cli.archive",
    "audit": "celery_archive.cli.archive", "forget": "celery_archive.cli.compliance", "prune": "celery_archive.cli.compliance",
    "stats": "celery_archive.cli.monitor", "rules": "celery_archive.cli.monitor",
    "query": "celery_archive.cli.query", "ddl": "celery_archive.cli.query",
    "restore": "celery_archive.cli.restore", "index": "celery_archive.cli.restore", "manifest": "celery_archive.cli.restore",
    "run": "celery_archive.cli.run",
    "serve": "celery_archive.web.command",
}


def load_commands() -> None:
    """Register every command (import all command modules)."""
    import importlib

    for module in dict.fromkeys(COMMAND_MODULES.values()):
        importlib.import_module(module)


class LazyGroup(click.Group):
    """The root group: a command's module is imported on first use (``COMMAND_MODULES``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            import importlib

            importlib.import_module(COMMAND_MODULES[cmd_name])
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_commands()
        return super().list_commands(ctx)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:  # a command's name mistyped: say the nearest ones, as click does for options
            import difflib

            close = difflib.get_close_matches(args[0] if args else "", list(COMMAND_MODULES), n=2, cutoff=0.7)
            if not close:
                raise
            raise click.UsageError(f"No such command {args[0]!r}. Did you mean {' or '.join(map(repr, close))}?", ctx) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="celery-archive")
@click.option("-A", "--app", default=None, envvar="CELERY_ARCHIVE_APP", show_envvar=True, metavar="MODULE[:ATTR]",
              help="A Celery app, as for `celery -A`: its result_backend, result_expires, table names, transport "
                   "options and serializer become the defaults of run, stats and rules check.")
@click.pass_context
def main(ctx: click.Context, app: str | None) -> None:
    """Archive Celery task results before cleanup deletes them, verify the archive,
    and purge from the result backend only what was verified."""


def opt(*decls: str, key: str, **kw: Any) -> Callable[[F], F]:
    """An option that the environment (CELERY_ARCHIVE_<KEY>) and the --config file can set too."""
    from celery_archive.settings import envvar

    return click.option(*decls, envvar=envvar(key), show_envvar=True, **kw)


def _load_settings(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager: the -A app's settings and the --config file become the defaults of the other
    options (click then applies, strongest first: flags, environment, these, built-ins)."""
    from celery_archive.settings import default_map

    try:
        defaults, data = default_map(ctx.find_root().params.get("app"), value)
    except ArchiveError as exc:
        raise click.UsageError(str(exc)) from exc
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["celery_archive.file"] = data
    return value


config_option = click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, is_eager=True,
                             envvar="CELERY_ARCHIVE_CONFIG", show_envvar=True, callback=_load_settings, expose_value=True,
                             help="TOML file with settings, [[rules]] and [hold] (see the README).")
source_option = opt("--source", key="source", metavar="URL",
                    help="The app's result_backend URL: db+postgresql+psycopg://user@host/db, db+sqlite:///results.db, "
                         "redis://:pw@host:6379/0; for django-celery-results, django+ and the Django database's URL: "
                         "django+postgresql+psycopg://user@host/db. Default: -A's result_backend.")


def source_options(f: F) -> F:
    """The options that say where results are and how the app stores them: run, stats, rules check."""
    for decorator in reversed([
        config_option, source_option,
        opt("--older-than", key="older_than", metavar="AGE",
            help="Take finished results whose date_done is older than this: 30d, 12h, 90m (default: -A's result_expires; "
                 "stats: --result-expires). "
                 "With [[rules]], the age of results no rule matches."),
        opt("--serializer", key="serializer", type=click.Choice(["json", "pickle", "msgpack", "yaml"]), default="json", show_default=True,
            help="The app's result_serializer, used to decode the queryable copy."),
        opt("--task-table", key="task_table", default="celery_taskmeta", show_default=True, metavar="[SCHEMA.]NAME",
            help="Task result table (database_table_names / database_table_schemas)."),
        opt("--group-table", key="group_table", default="celery_tasksetmeta", show_default=True, metavar="[SCHEMA.]NAME",
            help="Group result table."),
        opt("--key-prefix", key="key_prefix", default="", metavar="PREFIX", help="Redis: result_backend_transport_options['global_keyprefix']."),
        opt("--result-expires", key="result_expires", default="1d", show_default=True, metavar="AGE",
            help="Redis: the app's result_expires; dates saved groups, which Celery stores without a date."),
        opt("--master-name", key="master_name", default=None, help="Redis sentinel:// sources: the master's name (transport option master_name)."),
        opt("--timezone", key="timezone", default=None, metavar="ZONE",
            help="The app's time zone (its timezone setting; UTC if it has none and enable_utc; local for this machine's): "
                 "Celery >= 5.5 stores date_done in it on SQLite and MySQL. Default: -A's; without either, UTC is assumed."),
        opt("--celery-version", key="celery_version", default=None, metavar="X.Y",
            help="The Celery version of the workers that wrote the results (it decides how date_done was stored). "
                 "Default: the installed Celery's, which -A loads the app with."),
        opt("--batch-size", key="batch_size", type=click.IntRange(1), default=10_000, show_default=True, help="Results read per query."),
    ]):
        f = decorator(f)
    return f


