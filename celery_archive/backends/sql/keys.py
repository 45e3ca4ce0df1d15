"""The primary key of Celery's tables: keyset pages, and shards as ranges of it."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from celery_archive.backends.shard import Shard

if TYPE_CHECKING:
    from celery_archive.backends.sql.source import SqlSource


def last_value(values: Any) -> Any:
    v = values[-1]
    return v.as_py() if hasattr(v, "as_py") else v


def in_shard(shard: Shard | None, kind: str, table: sa.Table) -> list[sa.ColumnElement[bool]]:
    """The restriction to ``shard``'s id ranges of ``kind`` (a kind it does not name: nothing of it)."""
    if shard is None:
        return []
    ranges = [(lo, hi) for k, lo, hi in shard.ranges if k == kind]
    if not ranges:
        return [sa.false()]
    pk = table.c.id
    return [sa.or_(*(pk <= hi if lo is None else sa.and_(pk > lo, pk <= hi) for lo, hi in ranges))]


def split_ids(source: SqlSource, cutoff: dt.datetime, n: int) -> list[Shard]:
    """At most ``n`` shards of the rows under ``cutoff``: per table, contiguous ranges of the
    primary key holding about as many selected rows each (ntile over the ids), the last ending
    at the largest id read at the start (rows added later are the next run's)."""
    per: list[list[tuple[str, int | None, int]]] = [[] for _ in range(n)]
    try:
        with source.engine.connect() as conn:
            for kind, t in source.tables.items():
                top = conn.execute(sa.select(sa.func.max(t.c.id))).scalar()
                if top is None:
                    continue
                ids = (sa.select(t.c.id, sa.func.ntile(n).over(order_by=t.c.id).label("part"))
                       .where(*source._selected(kind, t, cutoff), t.c.id <= top).subquery())
                parts = conn.execute(sa.select(ids.c.part, sa.func.max(ids.c.id)).group_by(ids.c.part)
                                     .order_by(ids.c.part)).all()
                lo: int | None = None
                for i, (_, hi) in enumerate(parts):
                    end = int(top) if i == len(parts) - 1 else int(hi)
                    per[i].append((kind, lo, end))
                    lo = end
    except sa.exc.SQLAlchemyError as exc:
        raise source._error("splitting the selection of", exc) from exc
    used = [r for r in per if r]
    return [Shard(i, len(used), tuple(r)) for i, r in enumerate(used)]


def after_key(dialect: str, table: sa.Table, last: tuple[Any, Any]) -> sa.ColumnElement[bool]:
    """Rows after ``last`` = (date_done, id) in keyset order."""
    dd, pk = table.c.date_done, table.c.id
    if dialect in ("mysql", "mariadb"):
        return sa.or_(dd > last[0], sa.and_(dd == last[0], pk > last[1]))
    return sa.tuple_(dd, pk) > sa.tuple_(*last)
