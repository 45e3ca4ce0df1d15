"""celery-archive: archive Celery task results before cleanup deletes them, verify the
archive, purge only what was verified, and bring any result back later.

    from celery_archive import RunConfig, run, verify_archive, list_runs, parse_duration
    report = run(RunConfig(source="db+postgresql+psycopg://u@h/db", sink="/var/archive",
                           older_than=parse_duration("30d")))
    found = find("/var/archive", ["0f3c...e9"])      # found.records, found.missing
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery_archive.errors import (
    ArchiveError,
    ConfigError,
    LockError,
    NotArchivedError,
    SinkError,
    SourceError,
    VerifyError,
)
from celery_archive.version import __version__

if TYPE_CHECKING:
    from celery_archive.archive.catalog import list_runs, verify_archive
    from celery_archive.backends import TargetConfig, open_target
    from celery_archive.config import RunConfig, parse_duration, parse_size
    from celery_archive.integration import setup_beat
    from celery_archive.pipeline.run import DryRunReport, RunReport, run
    from celery_archive.restore.search import Found, find, restore_into
    from celery_archive.sinks import open_sink

_LAZY = {"list_runs": "archive.catalog", "verify_archive": "archive.catalog", "RunConfig": "config",
         "parse_duration": "config", "parse_size": "config", "DryRunReport": "pipeline.run", "RunReport": "pipeline.run",
         "run": "pipeline.run", "open_sink": "sinks", "TargetConfig": "backends", "open_target": "backends", "Found": "restore.search",
         "find": "restore.search", "restore_into": "restore.search", "setup_beat": "integration"}


def __getattr__(name: str) -> Any:
    """The API, imported on first use: importing the package loads nothing else (the CLI and a
    Celery worker pay only for what they call)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"celery_archive.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'celery_archive' has no attribute {name!r}")

__all__ = [
    "ArchiveError", "ConfigError", "DryRunReport", "Found", "LockError", "NotArchivedError", "RunConfig", "RunReport",
    "SinkError", "SourceError", "TargetConfig", "VerifyError", "__version__", "find", "list_runs", "open_sink",
    "open_target", "parse_duration", "parse_size", "restore_into", "run", "setup_beat", "verify_archive",
]
