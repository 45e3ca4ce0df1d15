"""The archive tier's settings, read from the Celery app's configuration (``app.conf``; with
``config_from_object(..., namespace="CELERY")`` they are ``CELERY_ARCHIVE_SINK`` and so on)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from celery_archive.errors import ConfigError

MiB = 1024**2


@dataclass(frozen=True)
class ArchiveSettings:
    sink: str  # archive_sink, or the CELERY_ARCHIVE_SINK environment variable
    restore_on_read: bool = False  # put a result found in the archive back into the live backend
    miss_ttl: float = 2.0  # seconds an id the archive does not hold is not looked up again
    index_refresh: float = 60.0  # seconds the listing of the index is trusted for ids it holds
    relist_after: float = 1.0  # an id not found is looked for again in a new listing once it is this old
    cache_bytes: int = 128 * MiB  # decoded row groups kept in memory
    index_cache_bytes: int = 64 * MiB  # index objects (run files and packs) kept in memory
    retry_after: float = 10.0  # seconds the archive is left alone after it could not be read
    timeout: float = 5.0  # seconds a remote (S3) archive may take to connect or to answer a read

    @classmethod
    def from_conf(cls, conf: Any) -> ArchiveSettings:
        sink = conf.get("archive_sink") or os.environ.get("CELERY_ARCHIVE_SINK", "")
        if not sink:
            raise ConfigError("the archive+ result backend needs the archive's location: set archive_sink "
                              "(app.conf.archive_sink = 's3://bucket/prefix' or a directory) or CELERY_ARCHIVE_SINK")

        def number(name: str, default: float) -> float:
            value = conf.get(name)
            if value is None:
                return default
            try:
                out = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, not {value!r}") from None
            if out < 0:
                raise ConfigError(f"{name} must not be negative, not {value!r}")
            return out

        restore = conf.get("archive_restore_on_read", False)
        if isinstance(restore, str):
            restore = restore.strip().lower() in ("1", "true", "yes", "on")
        return cls(sink=str(sink), restore_on_read=bool(restore), miss_ttl=number("archive_miss_ttl", cls.miss_ttl),
                   index_refresh=number("archive_index_refresh", cls.index_refresh),
                   relist_after=number("archive_relist_after", cls.relist_after),
                   cache_bytes=int(number("archive_cache_size", cls.cache_bytes)),
                   index_cache_bytes=int(number("archive_index_cache_size", cls.index_cache_bytes)),
                   retry_after=number("archive_retry_after", cls.retry_after),
                   timeout=number("archive_timeout", cls.timeout))
