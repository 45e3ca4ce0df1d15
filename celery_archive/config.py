"""Run configuration and the parsing of human-friendly durations and sizes."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from celery_archive.errors import ConfigError

if TYPE_CHECKING:
    from celery_archive.pipeline.rules import Policy

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w|y)\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.I)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_SIZES = {"b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


MAX_YEARS = 1000  # an age reaches back at most this far (dates before year 1 do not exist)


def is_duration(text: str) -> bool:
    """Whether ``text`` has the form of a duration (``30d``); parse_duration checks its size."""
    return _DURATION.match(text) is not None


def parse_duration(text: str, option: str | None = None) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``, ``7y`` (365-day years) -> timedelta, at most
    MAX_YEARS; ``option`` (``--older-than``) names the setting in a message."""
    where = f"{option}: " if option else ""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{where}invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 45s, 2w, 7y")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_YEARS * _UNITS["y"]:
        raise ConfigError(f"{where}duration {text!r} is too long: give at most {MAX_YEARS}y ({MAX_YEARS * 365}d)")
    return dt.timedelta(seconds=seconds)


def format_duration(td: dt.timedelta) -> str:
    secs = int(td.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if secs and secs % _UNITS[unit] == 0:
            return f"{secs // _UNITS[unit]}{unit}"
    return f"{secs}s"


def parse_size(text: str) -> int:
    """``128MiB``, ``64m``, ``500kb``, ``1048576`` -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"invalid size {text!r}: use e.g. 128MiB, 64MB, 500KiB")
    return int(float(m.group(1)) * _SIZES[(m.group(2) or "b").lower()])


@dataclass(frozen=True)
class RunConfig:
    """One archive run: where from, where to, what to take and how to write it."""

    source: str
    sink: str
    older_than: dt.timedelta
    format: str = "parquet"
    compression: str | None = None  # default: zstd for Parquet, none for JSONL
    serializer: str = "json"  # the app's result_serializer
    task_table: str = "celery_taskmeta"
    group_table: str = "celery_tasksetmeta"
    task_schema: str | None = None
    group_schema: str | None = None
    batch_size: int = 10_000
    max_file_bytes: int = 128 * 1024**2
    purge_batch: int = 50_000
    commit_every: int = 50_000  # results: each such part of a run is committed, then purged while the rest is taken (parts.py)
    delete: bool = True
    dry_run: bool = False
    spool_dir: Path | None = None
    # Redis sources
    key_prefix: str = ""  # result_backend_transport_options["global_keyprefix"]
    expiring_within: dt.timedelta | None = None  # also take results whose TTL is below this margin
    result_expires: dt.timedelta = dt.timedelta(days=1)  # the app's result_expires (dates saved groups)
    master_name: str | None = None  # sentinel:// master
    # how the app stored date_done (README "Time zones"): its zone (timezone / enable_utc) and the
    # Celery version of its workers; None: not given (UTC and the installed Celery)
    timezone: str | None = None
    celery_version: str | None = None
    # retention rules and the legal hold (config file); None: everything past older_than is archived
    policy: Policy | None = None
    max_rate: float | None = None  # results per second
    max_runtime: dt.timedelta | None = None  # stop taking new results after this, at a batch boundary
    metrics_file: Path | None = None  # Prometheus text format, written after each run
    iceberg_table: str | None = None  # NAMESPACE.TABLE: append each run's files to it
    iceberg_catalog: str = "default"  # the pyiceberg catalog's name (its own configuration)
    lease_ttl: float = 60.0  # seconds without renewal after which the archive's lease is stale
    shards: int = 1  # parts of the selection run side by side (pipeline/sharded.py)
    on_celery: bool = False  # the shards run on the app's Celery workers (celery_archive.tasks)
    queue: str = "celery_archive"  # the workers' queue for them

    def check(self) -> None:
        from celery_archive.backends.codec import SERIALIZERS
        from celery_archive.formats import COMPRESSIONS

        if self.format not in COMPRESSIONS:
            raise ConfigError(f"unknown --format {self.format!r}: use parquet or jsonl")
        if self.compression is not None and self.compression not in COMPRESSIONS[self.format]:
            raise ConfigError(f"--compression {self.compression!r} does not go with {self.format}: use one of {', '.join(COMPRESSIONS[self.format])}")
        if self.serializer not in SERIALIZERS:
            raise ConfigError(f"unknown --serializer {self.serializer!r}: use one of {', '.join(SERIALIZERS)}")
        if self.timezone is not None:
            from celery_archive.backends.dates import zone

            zone(self.timezone)
        if self.celery_version is not None:
            from celery_archive.backends.dates import parse_version

            parse_version(self.celery_version)
        if self.older_than < dt.timedelta(0):
            raise ConfigError("--older-than must not be negative")
        if self.max_rate is not None and not self.max_rate >= 0.001:
            raise ConfigError("--max-rate must be a number of results per second of at least 0.001")
        if self.max_runtime is not None and self.max_runtime <= dt.timedelta(0):
            raise ConfigError("--max-runtime must be positive, e.g. 2h")
        if self.lease_ttl < 1:
            raise ConfigError("--lease-ttl must be at least 1s, e.g. 60s")
        if not 1 <= self.shards <= 1024:
            raise ConfigError(f"--shards must be between 1 and 1024, not {self.shards}")
        if self.commit_every < 0:
            raise ConfigError(f"--commit-every must be a number of results (0: commit once, at the end), not {self.commit_every}")
        for name in ("batch_size", "max_file_bytes", "purge_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
