"""One exception tree: every error the library raises is an :class:`ArchiveError`.

Each class carries the process exit code the CLI uses for it, so the library and the
CLI agree on what a failure means. Messages name what was wrong and what to do next,
and never contain a password or secret key.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable


class ArchiveError(Exception):
    """Root of every error raised by celery-archive."""

    exit_code = 1


class ConfigError(ArchiveError):
    """A bad URL, option or argument: nothing was touched."""

    exit_code = 2


class SourceError(ArchiveError):
    """The result backend could not be read or changed (unreachable, not Celery's tables)."""


class SinkError(ArchiveError):
    """The archive storage failed (full disk, permission, missing object)."""


class ObjectExistsError(SinkError):
    """A write-once object already exists; it was not overwritten."""


class DamagedObjectError(SinkError):
    """An archive object is there but is not what celery-archive wrote (not JSON, a field
    missing or of the wrong type): damage for verify to report, not a storage failure."""


class ObjectNotFoundError(SinkError):
    """The object asked for is not in the sink."""


class VerifyError(ArchiveError):
    """The archive read back does not match what was extracted; nothing was deleted."""

    exit_code = 3


class LockError(ArchiveError):
    """Another run holds the archive's lease (or the backend's archiver lock)."""

    exit_code = 4


class LeaseLostError(LockError):
    """This run lost the archive's lease (taken over, removed, or not renewed in time): it
    stopped before its next commit, purge or delete."""


class NotArchivedError(ArchiveError):
    """A task id asked for is not in the archive (or its restore index)."""

    exit_code = 5


class RetainedError(SinkError):
    """A data file that forget must remove cannot be deleted (S3 Object Lock retention, a
    legal hold); nothing was changed."""


class ConflictError(ArchiveError):
    """A result to restore is already in the backend and --on-conflict fail was asked for."""

    exit_code = 6


class KeyMaterialError(ArchiveError):
    """An encrypted archive's key material is missing, wrong or refused (a keyfile that is not
    the master key, a data key destroyed by forget, KMS access denied); nothing was changed."""

    exit_code = 8


class ConversionError(ArchiveError):
    """A result cannot be put into this kind of backend without unpickling it."""


def disk_error(action: str, where: object, exc: OSError) -> SinkError:
    """A SinkError that says what failed on disk and what to do about it."""
    if exc.errno == errno.ENOSPC:
        return SinkError(f"no space left on the device holding {where} while {action}: free space, or pick another --sink or --spool-dir")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SinkError(f"permission denied on {where} while {action}: check the directory's owner and mode")
    return SinkError(f"{action} {where} failed: {exc.strerror or exc}")


def scrubbed(exc: BaseException, secrets: Iterable[str | None]) -> str:
    """The first line of an error's message (a driver's own, if wrapped), each secret masked."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    for secret in secrets:
        if secret:
            detail = detail.replace(secret, "***")
    return detail
