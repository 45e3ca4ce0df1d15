"""Read-only views of a result backend: ``stats`` (what it holds, for monitoring) and
``rules check`` (which rule takes what). Neither writes anything anywhere."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from celery_archive.backends import REDIS_SCHEMES, Tally, open_source
from celery_archive.config import RunConfig, format_duration
from celery_archive.pipeline.run import date_notes, newest_json
from celery_archive.times import iso

AGE_BUCKETS = ((1, "<1d"), (7, "1-7d"), (30, "7-30d"), (90, "30-90d"))


def age_bucket(day: str, today: dt.date) -> str:
    read = _day(day)
    if read is None:
        return "(no date)"  # none stored, or none that is a date (MySQL's zero date, 0000-00-00)
    age = (today - read).days
    return next((label for limit, label in AGE_BUCKETS if age < limit), ">=90d")


def _day(day: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(day) if day else None
    except ValueError:
        return None


@dataclass(frozen=True)
class StatsReport:
    source: str
    results: int
    bytes: int
    oldest: str | None  # the oldest date_done (a day)
    by_kind: dict[str, int]
    by_status: dict[str, int]
    by_name: dict[str, int]  # the 20 most frequent
    by_age: dict[str, int]
    retention: str  # --older-than
    past_retention: int  # finished results older than the retention: what a run would archive now
    no_ttl: int | None  # Redis: finished results whose key never expires
    unfinished: int | None  # Redis: pending/started results (not dated, not counted above)
    warn_above: int | None = None
    over: bool = False
    now: str = ""
    newest: dict[str, str] | None = None  # the newest result: task_id, date_done as stored, as UTC
    newest_past_retention: dict[str, str] | None = None  # the newest a run would take now
    dates: dict[str, Any] = field(default_factory=dict)  # per kind: how stored date_done became UTC
    warnings: list[str] = field(default_factory=list)
    source_counts: dict[str, int] = field(default_factory=dict)  # as a run's: what it would leave alone, and why

    def to_json(self) -> dict[str, Any]:
        return {"command": "stats", **asdict(self)}


def stats(cfg: RunConfig, warn_above: int | None = None) -> StatsReport:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    source = open_source(cfg)
    try:
        rows = source.stats(now, everything=True)
        counts = dict(source.counts)
        due = sum(n for *_, n, _b in source.stats(now - cfg.older_than))
        # and what only the count of what is due finds (SQL: dates that cannot be read); Redis
        # counts the same keys again, which stay counted once
        counts.update({k: v for k, v in source.counts.items() if k not in counts})
        newest, newest_due = source.newest(None), source.newest(now - cfg.older_than)
        dates, notes = source.describe_dates(), date_notes(source)
    finally:
        source.close()
    t = Tally.of(rows)
    ages = Counter[str]()
    for day, n in t.by_day.items():
        ages[age_bucket(day, now.date())] += n
    days = [day for day in t.by_day if _day(day)]
    redis = source.display_url.split("://", 1)[0] in REDIS_SCHEMES
    over = warn_above is not None and t.results > warn_above
    return StatsReport(source.display_url, t.results, t.bytes, min(days) if days else None, dict(t.by_kind),
                       dict(t.by_status.most_common()), dict(t.by_name.most_common(20)),
                       {label: ages[label] for _, label in (*AGE_BUCKETS, (0, ">=90d"), (0, "(no date)")) if ages[label]},
                       format_duration(cfg.older_than), due, counts.get("no_ttl", 0) if redis else None,
                       counts.get("unfinished", 0) if redis else None, warn_above, over, iso(now), newest_json(newest),
                       newest_json(newest_due), dates, notes, counts)


@dataclass(frozen=True)
class RulesReport:
    source: str
    checked_at: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    dates: dict[str, Any] = field(default_factory=dict)  # per kind: how stored date_done became UTC
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"command": "rules check", **asdict(self)}


def check_rules(cfg: RunConfig) -> RulesReport:
    """Every finished result classified by the policy, as a run now would: per rule, how many
    it would archive, delete or keep, and how many are not due yet."""
    from celery_archive.pipeline.rules import DEFAULT, HOLD, Applied, Policy

    policy = cfg.policy or Policy(cfg.older_than)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    source = open_source(cfg)
    applied = Applied(policy, now, None, source.purge_columns)
    try:
        for table in source.extract(now, cfg.batch_size, "rules-check", now):
            applied.apply(table)
        dates, notes = source.describe_dates(), date_notes(source)
    finally:
        source.close()
    counts = applied.counts()
    out = []
    for r in policy.rules:
        out.append({"rule": r.name, "match": r.match, "status": list(r.status), "larger_than": r.larger_than,
                    "smaller_than": r.smaller_than, "older_than": format_duration(r.older_than or policy.default_age),
                    "action": r.action, **_zero(counts.get(r.name))})
    out.append({"rule": DEFAULT, "match": "(no rule matched)", "older_than": format_duration(policy.default_age),
                "action": "archive", **_zero(counts.get(DEFAULT))})
    if policy.hold:
        out.append({"rule": HOLD, "match": ", ".join([*sorted(policy.hold.task_ids)[:5], *policy.hold.names]),
                    "action": "keep", **_zero(counts.get(HOLD))})
    return RulesReport(source.display_url, iso(now), out, dates, notes)


def _zero(counts: dict[str, int] | None) -> dict[str, int]:
    c = counts or {}
    return {"would_archive": c.get("archived", 0), "would_delete": c.get("deleted", 0), "would_keep": c.get("kept", 0),
            "not_due": c.get("not_due", 0)}
