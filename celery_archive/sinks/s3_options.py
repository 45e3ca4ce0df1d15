"""Write options of the S3 sink, from the sink URL's query: encryption, storage class,
Object Lock, legal hold, tags (see :class:`S3Options`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from celery_archive.archive.layout import AUDIT, CHAIN, DATA, MANIFESTS, RUNS
from celery_archive.errors import ConfigError

# What the archive keeps for its retention (data files, manifests, run reports) gets the Object
# Lock retention and legal hold (so do the audit log and the hash chain); data files also get the storage class. The index, which
# compaction replaces, and the run lock stay deletable and in STANDARD (read on every lookup).
_RETAINED = (DATA, MANIFESTS, RUNS, AUDIT, CHAIN)
_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
                    "GLACIER", "DEEP_ARCHIVE", "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE")


@dataclass(frozen=True)
class S3Options:
    """Per-object write options, from the sink URL's query:

    ``sse``           ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS); ``kms_key_id`` implies ``aws:kms``
    ``kms_key_id``    KMS key id, ARN or alias for SSE-KMS
    ``storage_class`` storage class of data files (``STANDARD_IA``, ``GLACIER_IR``, ...)
    ``object_lock``   ``COMPLIANCE`` or ``GOVERNANCE``: retention mode of data files, manifests,
                      run reports, audit events and hash chain positions (the bucket must have
                      Object Lock enabled)
    ``retain``        how long they are locked from when they are written: ``400d``, ``7y``
    ``legal_hold``    ``on``: a legal hold on the same objects
    ``tag``           ``key=value``, repeatable: tags on every object
    """

    sse: str | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    object_lock: str | None = None
    retain: dt.timedelta | None = None
    legal_hold: bool = False
    tags: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_query(cls, query: str) -> S3Options:
        from celery_archive.config import parse_duration

        opts: dict[str, Any] = {}
        tags: list[tuple[str, str]] = []
        for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            if name == "tag":
                k, eq, v = value.partition("=")
                if not k or not eq:
                    raise ConfigError(f"sink option tag={value!r}: use tag=key=value")
                tags.append((k, v))
            elif name in ("sse", "kms_key_id", "storage_class", "object_lock"):
                opts[name] = value
            elif name == "retain":
                opts[name] = parse_duration(value, "sink option retain")
            elif name == "legal_hold":
                if value.lower() not in ("on", "off", "true", "false", "1", "0"):
                    raise ConfigError(f"sink option legal_hold={value!r}: use legal_hold=on")
                opts[name] = value.lower() in ("on", "true", "1")
            else:
                raise ConfigError(f"unknown S3 sink option {name!r}: use sse, kms_key_id, storage_class, "
                                  "object_lock, retain, legal_hold or tag")
        o = cls(tags=tuple(tags), **opts)
        o.check()
        return o

    def check(self) -> None:
        sse = self.sse
        if sse is not None and sse not in ("AES256", "aws:kms", "aws:kms:dsse"):
            raise ConfigError(f"sink option sse={sse!r}: use sse=AES256 (SSE-S3) or sse=aws:kms (SSE-KMS)")
        if self.kms_key_id and sse not in (None, "aws:kms", "aws:kms:dsse"):
            raise ConfigError(f"sink option kms_key_id goes with sse=aws:kms, not sse={sse}")
        if self.storage_class is not None and self.storage_class not in _STORAGE_CLASSES:
            raise ConfigError(f"sink option storage_class={self.storage_class!r}: use one of {', '.join(_STORAGE_CLASSES)}")
        if self.object_lock is not None and self.object_lock not in ("COMPLIANCE", "GOVERNANCE"):
            raise ConfigError(f"sink option object_lock={self.object_lock!r}: use COMPLIANCE or GOVERNANCE")
        if (self.object_lock is None) != (self.retain is None):
            raise ConfigError("sink options object_lock and retain go together: e.g. object_lock=COMPLIANCE&retain=400d")
        if self.retain is not None and self.retain <= dt.timedelta(0):
            raise ConfigError("sink option retain must be positive")

    @property
    def locks(self) -> bool:
        return self.object_lock is not None or self.legal_hold

    def args(self, key: str, now: dt.datetime | None = None) -> dict[str, Any]:
        """put_object / create_multipart_upload arguments for ``key`` (relative to the sink)."""
        a: dict[str, Any] = {}
        if self.sse or self.kms_key_id:
            a["ServerSideEncryption"] = self.sse or "aws:kms"
        if self.kms_key_id:
            a["SSEKMSKeyId"] = self.kms_key_id
        if self.tags:
            a["Tagging"] = urlencode(self.tags)
        if key.startswith(_RETAINED):
            if self.object_lock and self.retain:
                a["ObjectLockMode"] = self.object_lock
                a["ObjectLockRetainUntilDate"] = (now or dt.datetime.now(dt.timezone.utc)) + self.retain
            if self.legal_hold:
                a["ObjectLockLegalHoldStatus"] = "ON"
        if self.storage_class and key.startswith(DATA):
            a["StorageClass"] = self.storage_class
        return a
