"""The ``celery-archive`` command: one module per command family, each registering its
commands on ``base.main``. The console script imports a command's module only when that
command runs (``base.COMMAND_MODULES``); ``from celery_archive.cli import main`` gives the
group with every command registered, as in-process callers and tests expect."""

from __future__ import annotations

from typing import Any


def entry() -> None:
    """The console script: a restore by id without click (``fast.py``), anything else through click."""
    import sys

    from celery_archive.cli.fast import exit_now, restore_by_id

    code = restore_by_id(sys.argv[1:])
    if code is not None:
        exit_now(code)
    from celery_archive.cli import base

    base.CONSOLE_SCRIPT = True
    base.main()


def __getattr__(name: str) -> Any:
    if name == "main":
        from celery_archive.cli import base

        base.load_commands()
        return base.main
    raise AttributeError(f"module 'celery_archive.cli' has no attribute {name!r}")


__all__ = ["entry", "main"]
