"""Putting results back into Celery's database backend (the conversions: ../convert.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from celery_archive.backends import PutReport, StorageFormat, TargetConfig, check_policy
from celery_archive.backends.convert import backend_error, convert, decoded_meta, dumps_value, loads_value, pickled
from celery_archive.backends.sql.url import parse_source_url
from celery_archive.errors import ConflictError, ConversionError, SourceError

_CHUNK = 500


class SqlTarget:
    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg
        self._url = parse_source_url(cfg.url)
        self.display_url = "db+" + self._url.render_as_string(hide_password=True)
        self._engine = sa.create_engine(self._url, pool_pre_ping=True)
        self._tables: dict[str, tuple[sa.Table, str]] = {}

    def _columns(self, name: str, schema: str | None, missing: str) -> dict[str, Any]:
        """The table's columns (name -> type); ``missing`` says what to do if there is no table."""
        try:
            with self._engine.connect() as conn:
                return {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(name, schema=schema)}
        except sa.exc.NoSuchTableError as exc:
            raise SourceError(f"no table {name} in {self.display_url}: {missing}") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise backend_error(self.display_url, "connecting to", exc, self._url.password) from exc

    def _table(self, kind: str) -> tuple[sa.Table, str]:
        """Celery's table for ``kind`` with its id sequence, and its storage format."""
        if kind not in self._tables:
            name, schema = ((self.cfg.task_table, self.cfg.task_schema) if kind == "task"
                            else (self.cfg.group_table, self.cfg.group_schema))
            cols = self._columns(name, schema, "start the Celery app against it once (Celery creates its tables), "
                                               "or pass --task-table/--group-table")
            seq = sa.Sequence("task_id_sequence" if kind == "task" else "taskset_id_sequence", schema=schema)
            columns = [sa.Column("id", sa.Integer, seq, primary_key=True)]
            sqlite = self._engine.dialect.name == "sqlite"  # date_done is text there: written as it was stored
            text: Any = sa.String()
            columns += [sa.Column(n, text if sqlite and n == "date_done" else t) for n, t in cols.items() if n != "id"]
            if kind == "group":  # both formats keep bytes there: the task table tells them apart
                fmt = self._table("task")[1]
            else:
                fmt = StorageFormat.CELERY_DB_57 if {"children", "stamps"} & set(cols) else StorageFormat.CELERY_DB_56
            self._tables[kind] = (sa.Table(name, sa.MetaData(), *columns, schema=schema), fmt)
        return self._tables[kind]

    def id_column(self, kind: str) -> str:
        return "task_id" if kind == "task" else "taskset_id"

    def _row(self, rec: dict[str, Any], table: sa.Table, fmt: str) -> dict[str, Any]:
        id_col = self.id_column(rec["kind"])
        where = f"a Celery {fmt[len('celery-db-'):]} table ({table.fullname})"
        if rec["storage_format"] in (StorageFormat.CELERY_REDIS, StorageFormat.DJANGO):
            row = convert(rec, where, lambda: self._from_meta(rec, fmt))
        else:
            row = {"result": convert(rec, where, lambda: self._result(rec, fmt))}
            row.update(status=rec["status"], traceback=rec["traceback"], name=rec["name"], args=rec["raw_args"],
                       kwargs=rec["raw_kwargs"], worker=rec["worker"], retries=rec["retries"], queue=rec["queue"],
                       children=rec["raw_children"], stamps=rec["raw_stamps"])
        row.update({id_col: rec["task_id"], "date_done": self._date(rec)})
        return {k: v for k, v in row.items() if k in table.c and k != "id"}

    def _date(self, rec: dict[str, Any]) -> Any:
        """date_done as the source stored it (raw_date_done) when it comes from the same kind of
        database; else the UTC instant, stored as Celery >= 5.4 would (on PostgreSQL: aware, so
        the session's zone applies); a v1 record (no raw_date_done) as before, naive UTC."""
        raw, utc = rec.get("raw_date_done"), rec["date_done"]
        dialect = self._engine.dialect.name
        if raw is not None and _dialect(str(rec.get("source") or "")) == dialect:
            return raw if dialect == "sqlite" else dt.datetime.fromisoformat(raw)
        if utc is not None and raw is not None and dialect == "postgresql":
            return utc.replace(tzinfo=dt.timezone.utc)
        if utc is not None and dialect == "sqlite":
            return utc.isoformat(sep=" ", timespec="microseconds")  # SQLAlchemy's (and so Celery's) text form
        return utc

    def _result(self, rec: dict[str, Any], fmt: str) -> bytes | None:
        raw: bytes | None = rec["raw_result"]
        if raw is None or fmt == StorageFormat.CELERY_DB_57 or rec["storage_format"] == StorageFormat.CELERY_DB_56 or raw[:1] == b"\x80":
            return raw  # 5.7 reads both formats; a pickle is what a 5.6 column holds
        if rec["kind"] == "group":
            raise ConversionError("Celery <= 5.6 keeps a pickled GroupResult object, which cannot be made safely")
        return pickled(loads_value(raw, rec["content_type"], rec["content_encoding"]))

    def _from_meta(self, rec: dict[str, Any], fmt: str) -> dict[str, Any]:
        meta = decoded_meta(rec)
        ser = self.cfg.serializer
        if rec["kind"] == "group":
            if fmt != StorageFormat.CELERY_DB_57:
                raise ConversionError("Celery <= 5.6 keeps a pickled GroupResult object, which cannot be made safely")
            return {"result": dumps_value(meta["result"], ser)}

        def enc(v: Any) -> bytes | None:
            return None if v is None else dumps_value(v, ser)

        new = fmt == StorageFormat.CELERY_DB_57
        return {"status": meta.get("status"), "result": dumps_value(meta.get("result"), ser) if new else pickled(meta.get("result")),
                "traceback": meta.get("traceback"), "name": meta.get("name"), "args": enc(meta.get("args")),
                "kwargs": enc(meta.get("kwargs")), "worker": meta.get("worker"), "retries": meta.get("retries"),
                "queue": meta.get("queue"), "children": enc(meta.get("children") or None)}

    def put(self, records: list[dict[str, Any]], on_conflict: str) -> PutReport:
        check_policy(on_conflict)
        report = PutReport()
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_kind.setdefault(rec["kind"], []).append(rec)
        prepared = []
        for kind, recs in by_kind.items():
            table, fmt = self._table(kind)
            prepared.append((kind, table, [self._row(r, table, fmt) for r in recs]))
        try:
            with self._engine.begin() as conn:
                for kind, table, rows in prepared:
                    id_col = table.c[self.id_column(kind)]
                    ids = [r[id_col.name] for r in rows]
                    existing: set[str] = set()
                    for i in range(0, len(ids), _CHUNK):
                        existing.update(conn.scalars(sa.select(id_col).where(id_col.in_(ids[i:i + _CHUNK]))))
                    if existing and on_conflict == "fail":
                        raise ConflictError(f"{len(existing)} result(s) already in {table.fullname} of {self.display_url} "
                                            f"(first: {sorted(existing)[0]}); nothing was restored: use --on-conflict skip or overwrite")
                    if existing and on_conflict == "overwrite":
                        for i in range(0, len(ids), _CHUNK):
                            conn.execute(sa.delete(table).where(id_col.in_(ids[i:i + _CHUNK])))
                        report.overwritten += len(existing)
                    new = [r for r in rows if on_conflict == "overwrite" or r[id_col.name] not in existing]
                    report.skipped += len(rows) - len(new)
                    if new:  # the id comes from Celery's sequence where the database has one
                        conn.execute(sa.insert(table), new)
                    report.restored += len(new)
        except sa.exc.SQLAlchemyError as exc:
            raise backend_error(self.display_url, "restoring into", exc, self._url.password) from exc
        return report

    def close(self) -> None:
        self._engine.dispose()



def _dialect(source: str) -> str:
    """The database kind of an archived record's source URL (``db+postgresql+psycopg://``)."""
    name = source.removeprefix("db+").split("://", 1)[0].split("+", 1)[0]
    return "mysql" if name == "mariadb" else name


def from_config(cfg: TargetConfig) -> SqlTarget:
    return SqlTarget(cfg)
