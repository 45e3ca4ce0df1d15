"""django-celery-results (``result_backend = "django-db"``) as a source.

``--source django+<SQLAlchemy URL of the Django database>``: its tables are read and purged the
way Celery's own database backend is (keyset pages on (date_done, id), set-wise deletes of rows
unchanged since they were read), through SQLAlchemy and ADBC, without importing the user's
Django project. Each record keeps the row's stored column values verbatim in ``raw_value`` (a
JSON object), so a restore puts back the very same row, dates included.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from celery_archive.backends import StorageFormat
from celery_archive.backends.codec import decode_column, json_text
from celery_archive.backends.dates import Naive
from celery_archive.backends.json_objects import objects
from celery_archive.backends.records import as_array, assemble, one_array, utc_naive
from celery_archive.backends.sql.source import SqlSource, SqlSourceConfig
from celery_archive.errors import ConfigError

if TYPE_CHECKING:
    from celery_archive.config import RunConfig

TASK_TABLE = "django_celery_results_taskresult"
GROUP_TABLE = "django_celery_results_groupresult"
STORAGE_FORMAT = StorageFormat.DJANGO
STORED = {
    "task": ("task_id", "status", "content_type", "content_encoding", "result", "date_done", "traceback", "meta",
             "task_args", "task_kwargs", "task_name", "worker", "date_created", "periodic_task_name", "date_started"),
    "group": ("group_id", "content_type", "content_encoding", "result", "date_done", "date_created"),
}
"""The columns a row is stored with (all but its id), kept verbatim in raw_value."""
DATES = ("date_done", "date_created", "date_started")
SERIALIZER_OF = {"application/json": "json", "application/x-python-serialize": "pickle",
                 "application/x-msgpack": "msgpack", "application/x-yaml": "yaml"}


def celery_db_url(url: str) -> str:
    """``django+postgresql://...`` -> ``db+postgresql://...`` (the same database)."""
    if not url.startswith("django+"):
        raise ConfigError(f"not a django-celery-results URL: expected django+postgresql+psycopg://..., django+sqlite:///..., got {url.split('://')[0]}://")
    return "db+" + url[len("django+"):]


def iso(value: Any) -> str | None:
    """A stored date as ISO 8601 in UTC (Django stores UTC when USE_TZ is on)."""
    if value is None:
        return None
    naive = utc_naive(value)
    return str(naive.isoformat()) + "+00:00"


class DjangoSource(SqlSource):
    required: ClassVar[dict[str, set[str]]] = {
        "task": {"id", "task_id", "status", "result", "date_done", "content_type", "content_encoding"},
        "group": {"id", "group_id", "result", "date_done", "content_type", "content_encoding"}}
    name_column = "task_name"
    id_columns: ClassVar[dict[str, str]] = {"task": "task_id", "group": "group_id"}
    what = "a django-celery-results table"
    sized_columns = ("result", "task_args", "task_kwargs", "traceback", "meta")
    arrow_pages = False  # build makes each row's raw_value from Python values
    column_types: ClassVar[dict[str, pa.DataType]] = {  # text, as django-celery-results' models declare them
        "id": pa.int64(), **{c: pa.string() for kind in ("task", "group") for c in STORED[kind] if c not in DATES}}

    def __init__(self, url: str, serializer: str = "json") -> None:
        super().__init__(SqlSourceConfig(celery_db_url(url), TASK_TABLE, GROUP_TABLE, serializer=serializer))
        self.display_url = "django+" + self.display_url[len("db+"):]

    def _format(self, columns: set[str]) -> StorageFormat:
        return STORAGE_FORMAT

    def _rule(self, kind: str) -> Naive:
        return Naive(why="django-celery-results stores UTC (USE_TZ = True; timestamptz on PostgreSQL)")

    def _not_found(self, where: str) -> str:
        return (f"table {where} not found in {self.display_url}: is this the Django database of a project with "
                "django_celery_results in INSTALLED_APPS and its migrations applied (manage.py migrate)?")

    def columns(self, kind: str, table: sa.Table) -> list[str]:
        return ["id", *(c for c in STORED[kind] if c in table.c)]

    def build(self, kind: str, page: dict[str, Any], table: sa.Table, run_id: str, archived_at: dt.datetime) -> pa.Table:
        n = len(page["id"])
        naive = {d: a for d in DATES if d in page and (a := _naive_utc(page[d])) is not None}
        cols = {k: one_array(v) for k, v in page.items() if k not in naive and k not in DATES}
        for d in DATES:  # as ISO text in UTC; Arrow timestamps (ADBC) are written so in Arrow, not one by one
            if d in naive:
                cols[d] = iso_texts(naive[d])
            elif d in page:
                values = page[d].to_pylist() if isinstance(page[d], (pa.Array, pa.ChunkedArray)) else page[d]
                cols[d] = pa.array([iso(v) for v in values], pa.string())
        names = [c for c in STORED[kind] if c in cols]
        try:
            raw_value = objects(names, [cols[c] for c in names])  # as orjson.dumps(dict) a row would (json_objects.py)
        except (TypeError, pa.ArrowException):  # a column of another type (SQLite stores anything)
            lists = [cols[c].to_pylist() for c in names]
            raw_value = pa.array([orjson.dumps(dict(zip(names, row))) for row in zip(*lists)], pa.binary())
        ctypes, encs = cols["content_type"], cols["content_encoding"]
        plain = pc.unique(ctypes).to_pylist() == ["application/json"] and pc.unique(encs).to_pylist() == ["utf-8"]
        texts: dict[str, Any] = {}
        errors: list[list[str | None]] = []
        meta_field = "meta" if kind == "task" else None
        for field in ("result", "task_args", "task_kwargs", meta_field):
            if field and field in cols:
                text = json_text(_bytes(cols[field])) if plain else None  # the rule: one JSON text a column
                if text is not None:
                    texts[field] = text
                    continue
                texts[field], errs = self._decode(cols[field].to_pylist(), ctypes.to_pylist(), encs.to_pylist(), field)
                errors.append(errs)
        decode_error = ["; ".join(e for e in row if e) or None for row in zip(*errors)] if errors else None
        given: dict[str, Any] = {
            "task_id": cols["task_id" if kind == "task" else "group_id"], "kind": kind,
            "status": cols.get("status", "SUCCESS") if kind == "task" else None,
            "date_done": as_array("date_done", naive["date_done"] if "date_done" in naive else
                                  [utc_naive(dt.datetime.fromisoformat(v)) if v else None for v in cols["date_done"].to_pylist()]),
            "name": cols.get("task_name"), "worker": cols.get("worker"), "traceback": cols.get("traceback"),
            "args": texts.get("task_args"), "kwargs": texts.get("task_kwargs"), "result": texts["result"],
            "children": _children(texts.get("meta"), n) if kind == "task" else None, "decode_error": decode_error,
            "raw_result": _stored_bytes(cols, "result"), "raw_args": _stored_bytes(cols, "task_args"),
            "raw_kwargs": _stored_bytes(cols, "task_kwargs"), "raw_value": raw_value, "raw_date_done": cols["raw_date_done"],
            "content_type": ctypes, "content_encoding": encs, "storage_format": STORAGE_FORMAT,
            "source": self.display_url, "source_table": table.fullname, "source_id": cols["id"],
            "run_id": run_id, "archived_at": archived_at,
        }
        return assemble(given, n)

    def _decode(self, values: list[str | None], ctypes: list[str], encs: list[str], field: str) -> tuple[list[bytes | None], list[str | None]]:
        """JSON texts (UTF-8) and errors for a text column whose rows say how they are encoded."""
        texts: list[bytes | None] = [None] * len(values)
        errors: list[str | None] = [None] * len(values)
        groups: dict[str, list[int]] = {}
        for i, ct in enumerate(ctypes):
            groups.setdefault(SERIALIZER_OF.get(ct, self.config.serializer), []).append(i)
        for serializer, rows in groups.items():
            raw: list[bytes | None] = []
            for i in rows:
                v = values[i]
                try:
                    raw.append(None if v is None else base64.b64decode(v, validate=True) if encs[i] == "binary" else v.encode())
                except ValueError:
                    raw.append(None)
                    errors[i] = f"{field}: not valid base64 for content_encoding binary"
            out, errs, _ = decode_column(raw, serializer, field)
            for j, i in enumerate(rows):
                texts[i] = out[j]
                errors[i] = errors[i] or (errs[j] if errs else None)
        return texts, errors


def _naive_utc(values: Any) -> pa.Array | pa.ChunkedArray | None:
    """Arrow timestamps (ADBC) as naive UTC, the same instants with their zone dropped, in
    microseconds; None for a DB-API driver's values."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)) or not pa.types.is_timestamp(values.type):
        return None
    return values.cast(pa.timestamp("us"))


def iso_texts(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Naive UTC timestamps as ``datetime.isoformat() + "+00:00"`` writes them (no fraction when
    it is zero), made in Arrow."""
    text = pc.replace_substring(one_array(values).cast(pa.timestamp("us")).cast(pa.string()), " ", "T", max_replacements=1)
    text = pc.replace_substring_regex(text, r"\.000000$", "")
    out: pa.Array = pc.binary_join_element_wise(text, "+00:00", "")
    return out


def _bytes(column: pa.Array) -> pa.Array:
    """A text column as its UTF-8 bytes."""
    return column.cast(pa.binary())


def _stored_bytes(cols: dict[str, pa.Array], field: str) -> pa.Array | None:
    """A text column's exact stored bytes (UTF-8)."""
    return _bytes(cols[field]) if field in cols else None


class _Meta(msgspec.Struct):
    children: msgspec.Raw = msgspec.Raw(b"null")


_META = msgspec.json.Decoder(_Meta)


def _children(meta: pa.Array | list[bytes | None] | None, n: int) -> pa.Array:
    """The children each task's meta names, as their JSON text (null if none or not readable);
    each distinct meta decoded once."""
    if meta is None:
        return pa.nulls(n, pa.string())
    coded = pc.dictionary_encode(meta if isinstance(meta, pa.Array) else pa.array(meta, pa.binary()))
    named = pa.array([_children_of(m) for m in coded.dictionary.to_pylist()], pa.string())
    out: pa.Array = named.take(coded.indices)
    return out


def _children_of(meta_text: str | bytes | None) -> str | None:
    if meta_text is None:
        return None
    try:
        children = bytes(_META.decode(meta_text).children)
    except msgspec.DecodeError:
        return None
    return None if children == b"null" else children.decode()


def from_config(cfg: RunConfig) -> DjangoSource:
    return DjangoSource(cfg.source, cfg.serializer)
