"""celery-archive: archive Celery task results before cleanup deletes them, verify the
archive, purge only what was verified, and bring any result back later.

    from celery_archive import RunConfig, run, verify_archive, list_runs, parse_duration
    report = run(RunConfig(source="db+postgresql+psycopg://u@h/db", sink="/var/archive",
                           older_than=parse_duration("30d")))
"""

from __future__ import annotations

__version__ = "0.1.0"

from celery_archive.config import RunConfig, parse_duration, parse_size
from celery_archive.errors import (
    ArchiveError,
    ConfigError,
    LockError,
    SinkError,
    SourceError,
    VerifyError,
)
from celery_archive.pipeline.catalog import list_runs, verify_archive
from celery_archive.pipeline.run import DryRunReport, RunReport, run

__all__ = [
    "ArchiveError", "ConfigError", "DryRunReport", "LockError", "RunConfig", "RunReport", "SinkError",
    "SourceError", "VerifyError", "__version__", "list_runs", "parse_duration", "parse_size", "run",
    "verify_archive",
]
