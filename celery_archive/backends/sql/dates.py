"""date_done in SQL tables: selected by the instant Celery meant, paged and compared exactly
as stored.

* PostgreSQL and MySQL/MariaDB: ``date_done < L``, with L the stored value that stands for
  the cutoff under the table's rule (dates.py), so the date_done index serves the query and
  keyset pages run on the stored values.
* SQLite keeps text, and text in other forms than Celery's own (``T``, ``Z``, ``+02:00``, no
  or more fractional digits) sorts apart from its instant. Pages run on the text exactly as
  stored (ORDER BY and ``>`` on the same text order, so they always end); the selection is
  by instant: ``julianday()`` reads every form (an offset by itself, naive text by the rule),
  and each fetched value is checked again in Python to the microsecond.

Each record keeps the stored value in ``raw_date_done`` (its text form), which the purge
compares and restore puts back; ``date_done`` becomes the UTC instant.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from celery_archive.backends.dates import Naive, looks_local
from celery_archive.backends.sql.driver import shown_text, texts

if TYPE_CHECKING:
    from celery_archive.backends.sql.source import SqlSource

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")

_EPOCH_JD = 2440587.5  # the Julian day of 1970-01-01 00:00 UTC
_JD_MARGIN = 2e-6  # days (~0.17 s): julianday's doubles are coarse; the Python check is exact
_OFFSET_GLOB = "*[+-][0-9][0-9]:[0-9][0-9]"

LOWEST = dt.datetime(1, 1, 2)  # the first stored date_done a run reads: in any zone, an instant Python can hold


def julian(ts: dt.datetime) -> float:
    return (ts - dt.datetime(1970, 1, 1)).total_seconds() / 86400 + _EPOCH_JD


def parse_text(value: str) -> dt.datetime | None:
    """SQLite's stored text as a datetime (aware when it has an offset), None if unreadable."""
    try:
        return dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None


def as_text(stored: Any) -> Any:
    """An Arrow column of stored dates as Arrow's cast writes them as text; for timestamps in
    UTC (timestamptz read in a UTC session) the same text ~13x faster: the naive value's text
    and "Z" (Arrow formats each zoned value through the time zone database)."""
    t = stored.type
    if pa.types.is_timestamp(t) and t.tz == "UTC":
        return pc.binary_join_element_wise(stored.cast(pa.timestamp(t.unit)).cast(pa.string()), "Z", "")
    return stored.cast(pa.string())


def text_of(value: Any) -> str | None:
    """A stored value's text form: SQLite's text as it is; a timestamp as ISO text (anything
    else, left alone as unreadable, as Python writes it)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return str(value.isoformat(sep=" ", timespec="microseconds"))
    return repr(value)


class StoredDates:
    """The date_done rules of one SQL source: per kind, the zone of naive values (``rules``)
    and whether the column holds instants itself (``aware``: timestamptz)."""

    def __init__(self, dialect: str, rules: dict[str, Naive], aware: dict[str, bool]) -> None:
        self.dialect, self.rules, self.aware = dialect, rules, aware

    def bound(self, kind: str, cutoff: dt.datetime) -> dt.datetime:
        """The stored value that stands for ``cutoff`` (naive UTC) in ``kind``'s table."""
        return cutoff if self.aware.get(kind) else self.rules[kind].stored_cutoff(cutoff)

    def older(self, kind: str, column: sa.ColumnElement[Any], cutoff: dt.datetime) -> list[sa.ColumnElement[bool]]:
        """Conditions for ``date_done`` older than ``cutoff``."""
        local = self.bound(kind, cutoff)
        if self.dialect != "sqlite":
            return [column < local, column >= LOWEST]  # not before year 1 (below): no instant a run can take
        # an index-usable bound first: any form of a date older than the cutoff starts with a
        # day before this one (offsets are within +-14 h)
        upper = (max(cutoff + dt.timedelta(hours=14), local) + dt.timedelta(days=1)).date().isoformat()
        jd = sa.func.julianday(column)
        by_offset = jd < julian(cutoff) + _JD_MARGIN
        unread = jd.is_(None)  # text SQLite cannot read (+0200): fetched, read (or counted) in Python
        if local == cutoff:
            return [column < upper, sa.or_(by_offset, unread)]
        has_offset = sa.or_(column.like("%Z"), column.op("GLOB")(_OFFSET_GLOB))
        return [column < upper, sa.or_(sa.case((has_offset, by_offset), else_=jd < julian(local) + _JD_MARGIN), unread)]

    def day(self, kind: str, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The UTC day of a stored date_done where the database can tell it (PostgreSQL; SQLite
        text with an offset), else the stored day; on SQLite NULL for what is not text (a
        number there would be read as a Julian day)."""
        zone = self.rules[kind].name if kind in self.rules else "UTC"
        if self.dialect == "postgresql" and zone not in ("UTC", "local") and not self.aware.get(kind):
            return sa.func.date(sa.func.timezone("UTC", sa.func.timezone(zone, column)))
        if self.dialect == "sqlite":
            return sa.case((sa.func.typeof(column) == "text", sa.func.date(column)), else_=sa.null())
        if self.dialect == "postgresql":  # -infinity and dates BC are no date a driver reads
            return sa.case((column >= LOWEST, sa.func.date(column)), else_=sa.null())
        return sa.func.date(column)

    def too_old(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        """Where a stored date_done is before year 1 (or a day into it, which a zone can put
        before it), the run leaves the row as bad_date_done: PostgreSQL's -infinity and dates
        BC, MySQL's zero date; None on SQLite, whose dates are read in Python."""
        return None if self.dialect == "sqlite" else sa.and_(column.is_not(None), column < LOWEST)

    def newest_order(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """An ORDER BY key that puts the newest stored date first."""
        return sa.func.julianday(column).desc() if self.dialect == "sqlite" else column.desc()

    def read(self, kind: str, page: dict[str, Any], cutoff: dt.datetime | None, counts: Counter[str],
             id_col: str, examples: dict[str, list[str]] | None = None, where: str = "") -> dict[str, Any] | None:
        """A fetched page with ``raw_date_done`` (the stored text) and ``date_done`` as UTC
        instants, less rows that are not taken: no task id (``no_task_id``), a date_done that
        cannot be read (``bad_date_done``), or (SQLite) not older than ``cutoff`` after all.
        ``examples`` gets the first few of those left alone, by row id of table ``where``."""
        stored = page["date_done"]
        keep: Any = None
        if isinstance(stored, (pa.Array, pa.ChunkedArray)):  # ADBC (PostgreSQL)
            raw = as_text(stored)
            instants, repeated = self.rules[kind].instants(stored)
        else:
            unread = counts["bad_date_done"]
            raw, instants, repeated, keep = self._read_values(kind, stored, cutoff, counts)
            if examples is not None and counts["bad_date_done"] > unread:  # parse again only then
                bad = [_unread(v, self.dialect) for v in stored]
                if any(bad):
                    _name(examples, "bad_date_done", where, page, pa.array(bad))
        if repeated:
            counts["date_done_ambiguous"] += repeated
        missing = pc.is_null(pa.array(page[id_col], pa.string())) if not isinstance(page[id_col], (pa.Array, pa.ChunkedArray)) \
            else pc.is_null(page[id_col])
        if pc.any(missing).as_py():
            counts["no_task_id"] += int(pc.sum(missing).as_py())
            if examples is not None:
                _name(examples, "no_task_id", where, page, missing)
            keep = pc.invert(missing) if keep is None else pc.and_(keep, pc.invert(missing))
        out = {**page, "raw_date_done": raw, "date_done": instants}
        if keep is None:
            return out
        if not pc.any(keep).as_py():
            return None
        return {k: keep_rows(v, keep) for k, v in out.items()}

    def _read_values(self, kind: str, stored: Any, cutoff: dt.datetime | None, counts: Counter[str]) -> tuple[Any, Any, int, Any]:
        """(raw texts, instants, repeated, keep mask or None) of values a DB-API driver gave."""
        if self.dialect != "sqlite":
            values = list(stored)
            bad = [isinstance(v, str) for v in values]  # text the driver could not read as a datetime
            if not any(bad):
                instants, repeated = self.rules[kind].instants(values)
                return [text_of(v) for v in values], instants, repeated, None
            counts["bad_date_done"] += sum(bad)
            instants, repeated = self.rules[kind].instants([None if b else v for v, b in zip(values, bad)])
            return [text_of(v) for v in values], instants, repeated, pa.array([not b for b in bad])
        raw = list(stored)
        # SQLite keeps a number or bytes stored in date_done as they are (its affinity): not a date
        parsed = [parse_text(v) if isinstance(v, str) else None for v in raw]
        instants, repeated = self.rules[kind].instants(parsed)
        keep = [p is not None and (cutoff is None or i < cutoff) for p, i in zip(parsed, instants)]
        if None in parsed:
            counts["bad_date_done"] += sum(p is None for p in parsed)
        return [text_of(v) for v in raw], [i if k else None for i, k in zip(instants, keep)], repeated, \
            (None if all(keep) else pa.array(keep))

    def typed(self, table: pa.Table, kind: str) -> pa.Array | pa.ChunkedArray:
        """A purge batch's stored dates (raw_date_done) as the values the database compares:
        SQLite's text as it is, a timestamp parsed back (timestamptz as an instant)."""
        aware = bool(self.aware.get(kind))
        raw = _v1_texts(table, aware) if "raw_date_done" in table.column_names else _v1_texts(table.append_column(
            "raw_date_done", pa.nulls(table.num_rows, pa.string())), aware)
        if self.dialect == "sqlite":
            return raw
        return raw.cast(pa.timestamp("us", tz="UTC") if aware else pa.timestamp("us"))


EXAMPLES = 5  # rows named per reason a row was left alone


def _unread(value: Any, dialect: str) -> bool:
    """Whether a stored date_done cannot be read: SQLite text that is no date, or what another
    driver gives as text because it is no datetime (MySQL's zero date, 0000-00-00 00:00:00)."""
    if dialect == "sqlite":
        return not isinstance(value, str) or parse_text(value) is None  # a number or bytes in date_done too
    return isinstance(value, str)


def _name(examples: dict[str, list[str]], reason: str, where: str, page: dict[str, Any], mask: pa.Array) -> None:
    """Name (by table and row id) the first EXAMPLES rows of ``mask`` for ``reason``."""
    if "id" not in page or len(examples.get(reason, ())) >= EXAMPLES:
        return
    shown = examples.setdefault(reason, [])
    for row_id in keep_rows(page["id"], mask)[:EXAMPLES - len(shown)]:
        shown.append(f"{where} id={row_id.as_py() if hasattr(row_id, 'as_py') else row_id}")


def keep_rows(values: Any, keep: pa.Array) -> Any:
    """The values (an Arrow array or a sequence) of the rows ``keep`` is true for."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.filter(keep)
    mask = keep.to_pylist()
    return [v for v, k in zip(values, mask) if k]


def _v1_texts(table: pa.Table, aware: bool) -> pa.Array | pa.ChunkedArray:
    """raw_date_done, filled in for records of v1 files (which have none) from date_done:
    SQLAlchemy's own text form, the value they were compared by then."""
    raw = table["raw_date_done"]
    if not raw.null_count:
        return raw
    zone = "+00:00" if aware else ""
    dates = table["date_done"].to_pylist()
    return pa.array([r if r is not None else None if d is None else d.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") + zone
                     for r, d in zip(raw.to_pylist(), dates)], pa.string())




def newest(src: SqlSource, cutoff: dt.datetime | None, kinds: tuple[str, ...]) -> tuple[str, str, dt.datetime] | None:
    """(task id, stored date_done, its UTC instant) of ``src``'s newest finished result older
    than ``cutoff`` (of all, with None)."""
    best: tuple[str, str, dt.datetime] | None = None
    with src.engine.connect() as conn, texts(conn, shown_text):  # shown only: text that is not UTF-8 too
        for kind, t in src.tables.items():
            if kind not in kinds:
                continue
            id_col = t.c[src.id_columns[kind]]
            conds: list[sa.ColumnElement[bool]] = src._selected(kind, t, cutoff) if cutoff else [t.c.date_done.is_not(None)]
            if kind == "task" and cutoff is None:
                conds.append(t.c.status.in_(FINISHED))
            if cutoff is None and src.dialect.name != "sqlite":
                conds.append(t.c.date_done >= LOWEST)  # as _selected: no date before year 1
            if src.dialect.name == "sqlite":  # a number in date_done is no date (julianday would read one)
                conds.append(sa.func.typeof(t.c.date_done) == "text")
            rows = conn.execute(sa.select(id_col, t.c.date_done).where(id_col.is_not(None), *conds)
                                .order_by(src.dates.newest_order(t.c.date_done)).limit(20)).all()
            page = src.dates.read(kind, {id_col.name: [r[0] for r in rows], "date_done": [r[1] for r in rows]}, cutoff,
                                  Counter(), id_col.name)
            for tid, raw, utc in zip(*(page[k] for k in (id_col.name, "raw_date_done", "date_done"))) if page else ():
                if best is None or utc > best[2]:
                    best = (str(tid), str(raw), utc)
    return best


def check_dates(src: SqlSource) -> str | None:
    """Where the app's zone decides and was not given: a warning when the newest finished
    result's date_done, read as UTC, looks like local time."""
    rule = src.dates.rules["task"]
    if rule.known and (rule.name == "UTC" or src.dialect.name != "postgresql" or src.dates.aware.get("task")):
        return None  # (on PostgreSQL in a zone, results of Celery 5.3 told for 5.4+ would lie ahead)
    found = newest(src, None, ("task",))
    if found is None:
        return None
    why = looks_local(found[2], dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    if not why:
        return None
    if rule.known:
        return (f"the newest date_done ({found[1]!r}, task {found[0]}) is {why} when read by the rule '{rule.why}': "
                "if the workers run another Celery version than the installed one, say which with --celery-version")
    return (f"the newest date_done ({found[1]!r}, task {found[0]}) is {why} when read as UTC: it looks like the app's "
            f"local time. {src.dates.rules['task'].why}. Results may be taken too early or too late: give the app's zone "
            "with -A, --timezone ZONE or CELERY_ARCHIVE_TIMEZONE (UTC if it has none)")
