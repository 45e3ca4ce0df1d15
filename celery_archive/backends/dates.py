"""How a stored ``date_done`` becomes the UTC instant Celery meant.

Celery computes date_done in Python and hands it to the backend; what is stored depends on the
Celery version, the backend and the app's settings (measured with the real Celery of each
version, README "Time zones"):

* Celery 5.3 passes naive UTC (``datetime.utcnow()``); 5.4 an aware UTC datetime; 5.5 and later
  ``app.now()``: aware, in the app's zone (``timezone``, else UTC with ``enable_utc``, else the
  machine's local zone). Saved groups always get an aware (5.4+) or naive (5.3) UTC date.
* PostgreSQL's ``timestamp without time zone`` turns an aware value into the wall-clock time
  of the session's TimeZone (the database/role default Celery's connections get); a naive
  value is stored as it is.
* SQLite and MySQL/MariaDB drivers drop the offset: the stored text/DATETIME is the wall-clock
  time of whatever zone the datetime was in (MariaDB's ``time_zone`` plays no part for DATETIME).
* Redis keeps ISO text with the offset (none in 5.3: UTC).

A :class:`Naive` says which zone a backend's naive values are wall-clock time in. A wall
time repeated at a DST fall-back is read as the later instant, as PostgreSQL reads it (so
Celery 5.4-5.6's own cleanup, which compares in the server, agrees); such values are counted.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery_archive.errors import ConfigError

UTC = dt.timezone.utc
Version = tuple[int, int]


def parse_version(text: str | None) -> Version:
    """``5.5.3`` -> (5, 5); None -> the installed Celery's (what ``-A`` loads the app with)."""
    if text is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("celery")
        except PackageNotFoundError:  # pragma: no cover - celery is a dependency
            text = "5.7"
    parts = str(text).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError as exc:
        raise ConfigError(f"--celery-version {text!r}: give a version such as 5.3, 5.4.0 or 5.5.3") from exc


def _local_name() -> str | None:
    """The IANA name of this machine's zone (TZ, /etc/localtime's target, /etc/timezone)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        try:
            target = os.path.realpath("/etc/localtime")
            name = target.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in target else ""
        except OSError:
            name = ""
    if not name and Path("/etc/timezone").is_file():
        name = Path("/etc/timezone").read_text().strip()
    return name or None


_UTC_NAMES = {"UTC", "Z", "GMT", "UCT", "GMT0", "UNIVERSAL", "ZULU", "GREENWICH",
              *(f"ETC/{n}" for n in ("UTC", "GMT", "UCT", "GMT0", "UNIVERSAL", "ZULU", "GREENWICH"))}  # names of UTC itself


@cache
def zone(name: str) -> dt.tzinfo:
    """A zone by IANA name; ``UTC``; or ``local``: this machine's (Celery's zone for an app with
    ``enable_utc = False`` and no ``timezone``)."""
    if name.upper() in _UTC_NAMES:
        return UTC
    if name == "local":
        local = _local_name()
        if local:
            return zone(local)
        try:
            with open("/etc/localtime", "rb") as f:
                return ZoneInfo.from_file(f, key=None)
        except OSError:
            return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {name!r}: give an IANA name such as Europe/Berlin or America/New_York, "
                          "UTC, or local (this machine's)") from exc


_POSIX_OFFSET = re.compile(r"^<([+-])(\d\d)(\d\d)?>[+-]\d")  # PostgreSQL's name for SET timezone = '-03'


def session_tz(name: str) -> dt.tzinfo:
    """A PostgreSQL TimeZone setting as a zone: an IANA name, or a fixed offset (``<-03>+03``)."""
    m = _POSIX_OFFSET.match(name)
    if m:
        minutes = int(m.group(2)) * 60 + int(m.group(3) or 0)
        return dt.timezone(dt.timedelta(minutes=minutes if m.group(1) == "+" else -minutes), name)
    try:
        return zone(name)
    except ConfigError as exc:
        raise ConfigError(f"PostgreSQL's TimeZone for Celery's sessions is {name!r}, which is not a zone celery-archive "
                          "can read: set an IANA name (ALTER DATABASE ... SET timezone = 'Europe/Berlin')") from exc


def _zone_name(tz: dt.tzinfo) -> str:
    if tz is UTC:
        return "UTC"
    return getattr(tz, "key", None) or (tz.tzname(None) if isinstance(tz, dt.timezone) else None) or "local"


@dataclass(frozen=True)
class Naive:
    """Naive stored values are wall-clock time in ``tz``; ``why`` says by which rule, ``known``
    whether the settings that decide it were given (or taken as Celery's defaults)."""

    tz: dt.tzinfo = UTC
    why: str = "naive UTC"
    known: bool = True

    @property
    def name(self) -> str:
        return _zone_name(self.tz)

    def describe(self) -> dict[str, Any]:
        return {"zone": self.name, "rule": self.why, "known": self.known}

    def _instant(self, value: dt.datetime) -> tuple[dt.datetime, bool]:
        """One stored value as naive UTC (an aware one by its own offset), and whether it was
        a wall time of a repeated hour."""
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None), False
        if self.tz is UTC:
            return value, False
        local = value.replace(tzinfo=self.tz, fold=1)  # the later of a repeated hour's two readings
        first, second = value.replace(tzinfo=self.tz, fold=0).utcoffset(), local.utcoffset()
        return local.astimezone(UTC).replace(tzinfo=None), first is not None and second is not None and first > second

    def instants(self, values: Any) -> tuple[Any, int]:
        """Stored timestamps (an Arrow array or a sequence of datetimes) as naive UTC, and how
        many were wall times of a repeated hour (read as the later instant)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            if values.type.tz:  # aware (timestamptz): already instants
                return values.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us")), 0
            if self.tz is UTC:
                return values, 0
            if getattr(self.tz, "key", None):
                key = self.tz.key  # type: ignore[attr-defined]
                later = pc.assume_timezone(values, key, ambiguous="latest", nonexistent="latest")
                earlier = pc.assume_timezone(values, key, ambiguous="earliest", nonexistent="latest")
                repeated = int(pc.sum(pc.not_equal(later, earlier)).as_py() or 0)
                return later.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us")), repeated
            values = values.to_pylist()
        elif self.tz is UTC and not any(v is not None and v.tzinfo is not None for v in values):
            return values, 0
        out: list[dt.datetime | None] = []
        repeated = 0
        for v in values:
            if v is None:
                out.append(None)
                continue
            utc, was = self._instant(v)
            out.append(utc)
            repeated += was
        return out, repeated

    def stored_cutoff(self, cutoff: dt.datetime) -> dt.datetime:
        """The stored value L such that a stored value s is older than ``cutoff`` (naive UTC)
        exactly when s < L: what an index-usable ``date_done < L`` takes."""
        if self.tz is UTC:
            return cutoff
        local = cutoff.replace(tzinfo=UTC).astimezone(self.tz)
        wall = local.replace(tzinfo=None)
        earlier = wall.replace(tzinfo=self.tz, fold=0).utcoffset()
        later = wall.replace(tzinfo=self.tz, fold=1).utcoffset()
        if local.fold == 1 or earlier == later or earlier is None or later is None:
            return wall
        # ``cutoff`` is the first of a repeated hour's two readings: every wall time of that hour
        # is read as its second, later reading, after ``cutoff``: L is where the hour begins
        lo, hi = cutoff, cutoff + (earlier - later)
        while hi - lo > dt.timedelta(microseconds=1):  # the change of offset: ~40 steps
            mid = lo + (hi - lo) / 2
            if mid.replace(tzinfo=UTC).astimezone(self.tz).utcoffset() == later:
                hi = mid
            else:
                lo = mid
        return hi.replace(tzinfo=UTC).astimezone(self.tz).replace(tzinfo=None)


def celery_rule(backend: str, kind: str, version: Version, app_zone: str | None, session_zone: str | None = None) -> Naive:
    """The zone of naive date_done values that Celery ``version`` stored in ``backend``
    (postgresql, sqlite, mysql) for ``kind`` (task or group)."""
    v = f"{version[0]}.{version[1]}"
    if backend == "postgresql":
        if version < (5, 4):
            return Naive(UTC, f"Celery {v} stores naive UTC (datetime.utcnow())")
        tz = session_tz(session_zone or "UTC")
        return Naive(tz, f"Celery {v} passes an aware date_done, which PostgreSQL stores as local time of the "
                         f"session TimeZone Celery's connections get ({session_zone})")
    if kind == "group":
        return Naive(UTC, f"Celery {v} stores a saved group's date_done in UTC")
    if version < (5, 5):
        return Naive(UTC, f"Celery {v} stores UTC (the driver drops the offset)")
    if app_zone is None:
        return Naive(UTC, f"Celery {v} stores app.now(), the app's local time (the driver drops the offset); no -A or "
                          "--timezone says the app's zone, so UTC (Celery's default) is assumed", known=False)
    tz = zone(app_zone)
    return Naive(tz, f"Celery {v} stores app.now(): local time of the app's zone ({app_zone}; the driver drops the offset)")


def looks_local(newest: dt.datetime, now: dt.datetime) -> str | None:
    """Why a newest date_done read as UTC looks like local time, or None: it lies in the
    future, or a whole number of half hours (up to 14 h) before ``now``, to within 5 minutes,
    as the newest result of an app west of UTC would (a busy app's newest is minutes old)."""
    ahead = newest - now
    if ahead > dt.timedelta(minutes=2):
        return f"{_span(ahead)} in the future"
    behind = now - newest
    halves = round(behind / dt.timedelta(minutes=30))
    if 1 <= halves <= 28 and abs(behind - halves * dt.timedelta(minutes=30)) <= dt.timedelta(minutes=5):
        return f"{_span(behind)} old, about a whole UTC offset, as local time west of UTC would be"
    return None


def _span(td: dt.timedelta) -> str:
    minutes = int(td.total_seconds() // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"
