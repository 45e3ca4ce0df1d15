"""Putting results back into django-celery-results' tables (the conversions: ../convert.py): the row with the
column values it was archived with (dates included), so that ``AsyncResult(id).get()`` in the
Django project returns the original value again."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import sqlalchemy as sa

from celery_archive.backends import TargetConfig
from celery_archive.backends.convert import convert
from celery_archive.backends.django.source import DATES, GROUP_TABLE, STORAGE_FORMAT, TASK_TABLE, celery_db_url
from celery_archive.backends.sql.target import SqlTarget
from celery_archive.errors import ConversionError


class DjangoTarget(SqlTarget):
    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__(TargetConfig(celery_db_url(cfg.url), task_table=TASK_TABLE, group_table=GROUP_TABLE))
        self.display_url = "django+" + self.display_url[len("db+"):]

    def id_column(self, kind: str) -> str:
        return "task_id" if kind == "task" else "group_id"

    def _table(self, kind: str) -> tuple[sa.Table, str]:
        if kind not in self._tables:
            name = TASK_TABLE if kind == "task" else GROUP_TABLE
            cols = self._columns(name, None, "apply django-celery-results' migrations (manage.py migrate django_celery_results)")
            columns = [sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)]
            columns += [sa.Column(n, t) for n, t in cols.items() if n != "id"]
            self._tables[kind] = (sa.Table(name, sa.MetaData(), *columns), STORAGE_FORMAT)
        return self._tables[kind]

    def _row(self, rec: dict[str, Any], table: sa.Table, fmt: str) -> dict[str, Any]:
        def stored() -> dict[str, Any]:
            if rec["storage_format"] != STORAGE_FORMAT:
                raise ConversionError(f"it is a {rec['storage_format']} record; django-celery-results rows come only from "
                                      "a django+ source")
            row: dict[str, Any] = orjson.loads(rec["raw_value"])
            aware = self._engine.dialect.name == "postgresql"  # timestamptz; others hold naive UTC
            for d in DATES:
                if row.get(d):
                    ts = dt.datetime.fromisoformat(row[d])
                    row[d] = ts if aware else ts.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return row

        row = convert(rec, f"django-celery-results ({table.fullname})", stored)
        return {k: v for k, v in row.items() if k in table.c}


def from_config(cfg: TargetConfig) -> DjangoTarget:
    return DjangoTarget(cfg)
