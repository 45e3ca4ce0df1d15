"""The ``celery-archive`` command: one module per command family, each registering its
commands on ``base.main``; importing this package registers them all."""

from __future__ import annotations

from celery_archive.cli import archive, base, compliance, monitor, query, restore, run  # noqa: F401  (their commands)
from celery_archive.cli.base import main
from celery_archive.web import command as _serve  # noqa: F401  (celery-archive serve)


def entry() -> None:
    """The console script."""
    base.CONSOLE_SCRIPT = True
    main()


__all__ = ["entry", "main"]
