"""Shards: disjoint parts of one run's selection, fixed when the run starts, that together are
exactly that selection. Each is extracted, written, verified and purged on its own (in a
process of its own or on a Celery worker); the run commits once, for all of them.

A source that can split its selection has ``shards(cutoff, n) -> list[Shard]`` (at most ``n``)
and ``restrict(shard)`` (from then on it extracts, counts and purges only that shard's part).
Any other source gives one shard, the whole selection (:func:`split`). The SQL sources
(Celery's tables, django-celery-results) split by ranges of the primary key of the rows under
the cutoff, bounded by the largest id read at the start and sized by row counts; a Redis
Cluster source may give one or more shards per primary (``keys`` names them); a single Redis
node gives one shard.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

IdRange = tuple[str, int | None, int]  # (kind, above this id (None: from the first), up to this id inclusive)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    ranges: tuple[IdRange, ...] = ()  # SQL: per kind, the primary key range; a kind not named: none of it
    keys: tuple[str, ...] = ()  # a source's own names of what the shard covers (e.g. a cluster primary)
    whole: bool = False  # the whole selection: nothing to restrict

    @property
    def name(self) -> str:
        return f"{self.index + 1}/{self.count}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "ranges": [list(r) for r in self.ranges],
                "keys": list(self.keys), "whole": self.whole}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Shard:
        return cls(int(obj["index"]), int(obj["count"]), tuple((str(k), lo, int(hi)) for k, lo, hi in obj.get("ranges", [])),
                   tuple(obj.get("keys", [])), bool(obj.get("whole", False)))


WHOLE = Shard(0, 1, whole=True)


def split(source: Any, cutoff: dt.datetime, n: int) -> list[Shard]:
    """At most ``n`` shards of what ``source`` selects under ``cutoff``; one (the whole
    selection) for a source that does not split."""
    shards = getattr(source, "shards", None)
    if n <= 1 or shards is None:
        return [WHOLE]
    out: list[Shard] = shards(cutoff, n)
    return out or [WHOLE]


def restrict(source: Any, shard: Shard) -> None:
    """From now on ``source`` extracts and purges only ``shard``'s part of its selection."""
    if not shard.whole:
        source.restrict(shard)
