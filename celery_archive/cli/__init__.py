"""The ``celery-archive`` command: one module per command family, each registering its
commands on ``base.main``; importing this package registers them all."""

from __future__ import annotations

from celery_archive.cli import archive, monitor, query, restore, run  # noqa: F401  (their commands)
from celery_archive.cli.base import main


def entry() -> None:
    """The console script."""
    main()


__all__ = ["entry", "main"]
