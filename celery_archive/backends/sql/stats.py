"""Dry runs and ``stats`` on a SQL source: what a run would take, counted by the database in
one GROUP BY a table, and what it would leave alone (a date_done that is no date, SQLite's
values of a type Celery never writes) counted as the run counts it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlalchemy as sa

from celery_archive.backends.sql.dates import EXAMPLES, FINISHED
from celery_archive.backends.sql.driver import shown_text, text_or_bytes, texts
from celery_archive.backends.sql.keys import in_shard

if TYPE_CHECKING:
    from celery_archive.backends.sql.source import SqlSource

Counted = list[tuple[str, str | None, str | None, str, int, int]]  # kind, status, name, day, count, bytes


def count_results(src: SqlSource, cutoff: dt.datetime, everything: bool = False) -> Counted:
    """(kind, status, name, day, count, bytes) for what a run would take, or with
    ``everything`` for every result in the tables (day "" when there is no date_done)."""
    out: Counted = []
    try:
        with src.engine.connect() as conn, texts(conn, shown_text):  # what is shown: text that is not UTF-8 too
            for kind, t in src.tables.items():
                sized = [c for c in src.sized_columns if c in t.c]
                nbytes = sum((sa.func.coalesce(sa.func.length(t.c[c]), 0) for c in sized), sa.literal(0))
                day = src.dates.day(kind, t.c.date_done)
                status = t.c.status if kind == "task" else None
                name = t.c[src.name_column] if src.name_column in t.c else None
                selected = [] if everything else [*src._selected(kind, t, cutoff), src._id(kind, t).is_not(None)]
                sound = None if everything else _sound(src, kind, t)
                # PostgreSQL refuses a constant (NULL, true) in GROUP BY: group by real columns only
                keys = [k for k in (status, name, day, sound) if k is not None]
                stmt = (sa.select(sa.null() if status is None else status, sa.null() if name is None else name, day,
                                  sa.func.count(), sa.func.sum(nbytes), sa.true() if sound is None else sound)
                        .where(*selected).group_by(*keys))
                groups: dict[tuple[str | None, str | None, str], list[int]] = {}
                malformed, not_utf8 = 0, []  # rows a run leaves as malformed: by SQL's check, and ids by the text check
                for st, nm, d, n, b, ok in conn.execute(stmt):
                    if not everything and (d is None or (src.dialect.name != "sqlite" and isinstance(d, str))):
                        # a date_done that is no date (SQLite text date() cannot read, MySQL's
                        # zero date): a run leaves these rows
                        src.counts["bad_date_done"] += int(n)
                    elif not ok:  # a value of a type Celery never writes there: a run leaves these rows
                        malformed += int(n)
                    else:
                        st, nm = (shown_text(v) if isinstance(v, bytes) else v for v in (st, nm))  # SQLite: bytes anywhere
                        group = groups.setdefault((st, nm, "" if d is None else str(d)[:10]), [0, 0])
                        group[0], group[1] = group[0] + int(n), group[1] + int(b or 0)
                if sound is not None:  # SQLite: and text that is not UTF-8, which SQL cannot tell
                    for row_id, group_key, nb in _not_utf8(conn, src, kind, t, [*selected, sound], (status, name, day, nbytes)):
                        counted = groups.get(group_key)
                        if counted is None:  # its date_done is no date: counted as bad_date_done, as the run leaves it
                            continue
                        counted[0], counted[1] = counted[0] - 1, counted[1] - nb
                        not_utf8.append(row_id)
                    if malformed or not_utf8:
                        src.counts["malformed"] += malformed + len(not_utf8)
                        ids = conn.execute(sa.select(t.c.id).where(*selected, sa.not_(sound)).order_by(t.c.id).limit(EXAMPLES))
                        shown = src.examples.setdefault("malformed", [])
                        named = [*not_utf8, *(i for (i,) in ids)]
                        shown.extend(f"{t.fullname} id={i}" for i in named[:max(0, EXAMPLES - len(shown))])
                out += [(kind, st, nm, d, n, b) for (st, nm, d), (n, b) in groups.items() if n]
                if not everything:
                    too_old = before_year_1(src, kind, t)
                    if too_old is not None:
                        noted(src, t, conn.execute(too_old).one())
    except sa.exc.SQLAlchemyError as exc:
        raise src._error("counting results in", exc) from exc
    return out


def before_year_1(src: SqlSource, kind: str, t: sa.Table) -> Any:
    """(count, first id) of the finished rows a run leaves because their date_done is before
    year 1 (dates.py, too_old), or None where there are none to count (SQLite)."""
    cond = src.dates.too_old(t.c.date_done)
    if cond is None:
        return None
    finished = [t.c.status.in_(FINISHED)] if kind == "task" else []
    return sa.select(sa.func.count(), sa.func.min(t.c.id)).where(cond, *finished, *in_shard(src.shard, kind, t))


def noted(src: SqlSource, t: sa.Table, row: Any) -> None:
    """Count (bad_date_done) and name what before_year_1 found."""
    n, first = (v.as_py() if hasattr(v, "as_py") else v for v in row)
    if n:
        src.counts["bad_date_done"] += int(n)
        shown = src.examples.setdefault("bad_date_done", [])
        if len(shown) < EXAMPLES:
            shown.append(f"{t.fullname} id={first} and {int(n) - 1} more" if n > 1 else f"{t.fullname} id={first}")


def _not_utf8(conn: sa.Connection, src: SqlSource, kind: str, t: sa.Table, where: list[sa.ColumnElement[bool]],
              grouped: tuple[sa.ColumnElement[Any] | None, ...]) -> Iterator[tuple[int, tuple[str | None, str | None, str], int]]:
    """(id, group, bytes) of each selected SQLite row with text that is not UTF-8 in a column a
    run reads as text (the run leaves it, malformed); only rows with text that is not ASCII are read."""
    cols = [t.c[n] for n in src.columns(kind, t) if n != "date_done" and src.column_types.get(n) == pa.string()]
    if not cols:
        return
    wide = sa.or_(*(c.op("GLOB")("*[^\x01-\x7f]*") for c in cols))  # a character beyond ASCII, or a byte
    shown = [sa.null() if e is None else e for e in grouped]
    with texts(conn, text_or_bytes):  # such text as its bytes
        for row_id, st, nm, d, nb, *values in conn.execute(sa.select(t.c.id, *shown, *cols).where(*where, wide)):
            if any(isinstance(v, bytes) for v in values):
                st, nm = (shown_text(v) if isinstance(v, bytes) else v for v in (st, nm))
                yield int(row_id), (st, nm, "" if d is None else str(d)[:10]), int(nb or 0)


def _sound(src: SqlSource, kind: str, table: sa.Table) -> sa.ColumnElement[bool] | None:
    """Where a row holds only what a run's malformed check takes; None but on SQLite, which
    stores any type anywhere (other databases keep a column's type)."""
    if src.dialect.name != "sqlite":
        return None
    from celery_archive.backends.sql.sqlite_arrow import sound

    return sound(table, src.columns(kind, table), src.column_types)
