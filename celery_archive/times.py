"""Instants as the archive writes them."""

from __future__ import annotations

import datetime as dt


def iso(ts: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z; a naive datetime is taken as UTC."""
    return (ts.astimezone(dt.timezone.utc) if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)).isoformat().replace("+00:00", "Z")
