"""Rotating verification: which data files a ``verify`` reads, and when each was last read.

``--subset n/t`` takes the files whose key's sha256, read as a number, is ``n - 1`` modulo
``t``: deterministic, and the t subsets ``1/t .. t/t`` partition the files (each file in exactly
one), so t nightly runs of ``verify --subset $((day % t + 1))/t`` check everything.

``--max-duration D`` reads the least recently verified files first and stops taking new ones
when D is up. Every file a verify reads is recorded, create-only, as
``verified/<sha256(key)[:32]>/<UTC time>.json`` (``{key, sha256, ok, at}``); the last time of
each file is read from the keys alone (one listing), so no record is ever rewritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import VERIFIED
from celery_archive.archive.manifest import FileEntry
from celery_archive.errors import ConfigError, ObjectExistsError
from celery_archive.sinks import Sink

_TIME = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True)
class Subset:
    """The ``n``-th of ``t`` subsets of the files (1-based)."""

    n: int
    t: int

    @classmethod
    def parse(cls, text: str) -> Subset:
        n_text, sep, t_text = text.partition("/")
        try:
            n, t = int(n_text), int(t_text)
        except ValueError:
            n = t = 0
        if not sep or t < 1 or not 1 <= n <= t:
            raise ConfigError(f"--subset {text!r}: give n/t with 1 <= n <= t, e.g. 3/7 (the third of seven subsets; "
                              "1/7 .. 7/7 cover every file once)")
        return cls(n, t)

    def holds(self, key: str) -> bool:
        return int.from_bytes(hashlib.sha256(key.encode()).digest(), "big") % self.t == self.n - 1

    def __str__(self) -> str:
        return f"{self.n}/{self.t}"


def file_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def last_verified(sink: Sink) -> dict[str, str]:
    """file id -> the UTC time (``YYYYMMDDTHHMMSS.ffffffZ``) it was last verified."""
    out: dict[str, str] = {}
    for o in sink.list(VERIFIED):
        parts = o.key[len(VERIFIED):].split("/")
        if len(parts) == 2 and parts[1].endswith(".json"):
            at = parts[1][: -len(".json")]
            if at > out.get(parts[0], ""):
                out[parts[0]] = at
    return out


def oldest_first(entries: Iterable[tuple[str, FileEntry]], last: dict[str, str]) -> list[tuple[str, FileEntry]]:
    """(run id, entry) pairs, never verified first, then the least recently verified; ties by key."""
    return sorted(entries, key=lambda pair: (last.get(file_id(pair[1].key), ""), pair[1].key))


def record(sink: Sink, entry: FileEntry, ok: bool, at: dt.datetime | None = None) -> None:
    """Record that ``entry``'s file was read back now (create-only; a clash, the same microsecond, is the same fact)."""
    at = at or dt.datetime.now(dt.timezone.utc)
    key = f"{VERIFIED}{file_id(entry.key)}/{at.strftime(_TIME)}.json"
    try:
        mf.write_json(sink, key, {"key": entry.key, "sha256": entry.sha256, "ok": ok, "at": at.isoformat()})
    except ObjectExistsError:
        pass
