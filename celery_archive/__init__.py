"""celery-archive: archive Celery task results before cleanup deletes them, verify the
archive, purge only what was verified, and bring any result back later.

    from celery_archive import RunConfig, run, verify_archive, list_runs, parse_duration
    report = run(RunConfig(source="db+postgresql+psycopg://u@h/db", sink="/var/archive",
                           older_than=parse_duration("30d")))
    found = find("/var/archive", ["0f3c...e9"])      # found.records, found.missing
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if "pyarrow" not in sys.modules:
    # Arrow's default allocator (mimalloc) keeps freed memory: a 200,000-result run peaked at
    # 277 MiB with it and 158 MiB with the system allocator, at the same speed. A choice the
    # user made (this variable, or pyarrow already loaded) is left alone.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from celery_archive.config import RunConfig, parse_duration, parse_size
from celery_archive.errors import (
    ArchiveError,
    ConfigError,
    LockError,
    NotArchivedError,
    SinkError,
    SourceError,
    VerifyError,
)
from celery_archive.pipeline.catalog import list_runs, verify_archive
from celery_archive.pipeline.run import DryRunReport, RunReport, run
from celery_archive.sinks import open_sink

if TYPE_CHECKING:
    from celery_archive.integration import setup_beat
    from celery_archive.pipeline.putback import TargetConfig, open_target
    from celery_archive.pipeline.restore import Found, find, restore_into

_LAZY = {"TargetConfig": "pipeline.putback", "open_target": "pipeline.putback", "Found": "pipeline.restore",
         "find": "pipeline.restore", "restore_into": "pipeline.restore", "setup_beat": "integration"}


def __getattr__(name: str) -> Any:
    """The restore API and the Celery integration, imported on first use (a nightly run does not pay for them)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"celery_archive.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'celery_archive' has no attribute {name!r}")

__all__ = [
    "ArchiveError", "ConfigError", "DryRunReport", "Found", "LockError", "NotArchivedError", "RunConfig", "RunReport",
    "SinkError", "SourceError", "TargetConfig", "VerifyError", "__version__", "find", "list_runs", "open_sink",
    "open_target", "parse_duration", "parse_size", "restore_into", "run", "setup_beat", "verify_archive",
]
