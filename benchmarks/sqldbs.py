"""The databases bench_sql.py runs on: a template of expired results written by the backend's own
code, identical vacuumed copies of it, and the backend's own cleanup as a whole process.

``postgresql``, ``mysql`` (MariaDB) and ``sqlite`` hold Celery's DatabaseBackend tables;
``django`` (PostgreSQL), ``django-mysql`` and ``django-sqlite`` hold django-celery-results'
tables, written by Celery's django-db backend in a Django process (benchmarks/django_side.py).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa
from common import write_samples

PG = os.environ.get("CA_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MYSQL = os.environ.get("CA_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
HERE = Path(__file__).resolve().parent
KINDS = ("postgresql", "mysql", "sqlite", "django", "django-mysql", "django-sqlite")
CLEANUP = ("import sys, datetime; from celery import Celery; app = Celery('b', backend=sys.argv[1]); "
           "app.conf.result_expires = datetime.timedelta(days=30); app.backend.cleanup()")


class Db:
    """One kind of database; a database is named by a string (a database name or a file path)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.django = kind.startswith("django")
        self.engine = {"django": "postgresql", "django-mysql": "mysql", "django-sqlite": "sqlite"}.get(kind, kind)
        self.table = "django_celery_results_taskresult" if self.django else "celery_taskmeta"
        self.dir = Path(tempfile.mkdtemp(prefix="ca_bench_")) if self.engine == "sqlite" else None

    @property
    def baseline(self) -> str:
        return "TaskResult.objects.delete_expired()" if self.django else "celery cleanup"

    def url(self, name: str) -> str:
        if self.engine == "sqlite":
            return f"sqlite:///{name}"
        admin = PG if self.engine == "postgresql" else MYSQL
        return sa.make_url(admin).set(database=name).render_as_string(hide_password=False)

    def source(self, name: str) -> str:
        return ("django+" if self.django else "db+") + self.url(name)

    def cleanup_argv(self, name: str) -> list[str]:
        if self.django:
            return [sys.executable, str(HERE / "django_side.py"), "cleanup", self.url(name)]
        return [sys.executable, "-c", CLEANUP, self.source(name)]

    def _admin(self) -> sa.Engine:
        return sa.create_engine(PG if self.engine == "postgresql" else MYSQL, isolation_level="AUTOCOMMIT")

    def create(self, prefix: str = "ca_bench") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        if self.dir is not None:
            return str(self.dir / f"{name}.db")
        with self._admin().connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
        return name

    def make_template(self, rows: int) -> str:
        """A database holding ``rows`` expired results (70 to 40-47 days old) cloned
        from 100 that the backend's own code wrote (json, result_extended)."""
        name = self.create()
        try:
            self._make(name, rows)
        except BaseException:
            self.drop(name)
            raise
        return name

    def _make(self, name: str, rows: int) -> None:
        if self.django:
            import subprocess

            subprocess.run([sys.executable, str(HERE / "django_side.py"), "write", self.url(name)], check=True)
        else:
            from celery import Celery

            app = Celery("bench", backend="db+" + self.url(name), set_as_current=False)
            app.conf.result_extended = True
            write_samples(app)
            app.backend.ResultSession().get_bind().dispose()
        if self.kind == "postgresql":
            fill_pg(self.url(name), rows, f"(now() at time zone 'utc') - interval '70 days' + g * interval '{step(rows)} seconds'")
        else:
            self._fill(name, rows)

    def _fill(self, name: str, rows: int) -> None:
        """The samples in turn with fresh uuid task ids and dates step() apart, inserted in chunks."""
        engine = sa.create_engine(self.url(name))
        table = sa.Table(self.table, sa.MetaData(), autoload_with=engine)
        aware = self.engine == "postgresql"
        with engine.begin() as c:
            sample = [dict(r._mapping) for r in c.execute(sa.select(table).order_by(table.c.id))]
            c.execute(table.delete())
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=70)
        if not aware:
            start = start.replace(tzinfo=None)
        for first in range(0, rows, 5000):
            chunk = []
            for g in range(first, min(rows, first + 5000)):
                row = dict(sample[g % len(sample)])
                row["id"] = g + 1  # explicit: on MariaDB Celery's id column takes a SEQUENCE, not AUTO_INCREMENT
                row["task_id"] = str(uuid.uuid4())
                row["date_done"] = start + dt.timedelta(seconds=step(rows) * g)
                chunk.append(row)
            with engine.begin() as c:
                c.execute(table.insert(), chunk)
        engine.dispose()

    def clone(self, template: str) -> str:
        """An identical copy of ``template``, vacuumed (PostgreSQL, SQLite) or analyzed (MariaDB)."""
        if self.engine == "sqlite":
            name = template.replace(".db", f"_c{secrets.token_hex(3)}.db")
            shutil.copyfile(template, name)
            e = sa.create_engine(self.url(name))
            with e.connect() as c:
                c.exec_driver_sql("VACUUM")
            e.dispose()
            return name
        name = f"{template}_c{secrets.token_hex(3)}"
        with self._admin().connect() as c:
            if self.engine == "postgresql":
                c.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
            else:
                c.exec_driver_sql(f"CREATE DATABASE {name}")
                for (t,) in c.exec_driver_sql(f"SHOW TABLES FROM {template}").all():
                    c.exec_driver_sql(f"CREATE TABLE {name}.{t} LIKE {template}.{t}")
                    c.exec_driver_sql(f"INSERT INTO {name}.{t} SELECT * FROM {template}.{t}")
                c.exec_driver_sql(f"ANALYZE TABLE {name}.{self.table}")
        if self.engine == "postgresql":
            e = sa.create_engine(self.url(name), isolation_level="AUTOCOMMIT")
            with e.connect() as c:
                c.exec_driver_sql(f"VACUUM ANALYZE {self.table}")
            e.dispose()
        return name

    def drop(self, name: str) -> None:
        if self.engine == "sqlite":
            Path(name).unlink(missing_ok=True)
            return
        force = " WITH (FORCE)" if self.engine == "postgresql" else ""
        with self._admin().connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def remaining(self, name: str) -> int:
        e = sa.create_engine(self.url(name))
        with e.connect() as c:
            n = int(c.exec_driver_sql(f"SELECT count(*) FROM {self.table}").scalar_one())
        e.dispose()
        return n


def step(rows: int) -> float:
    """Seconds between two results' dates: 10, or less so that all are older than 40 days."""
    return min(10.0, 30 * 86400 / rows)


def fill_pg(url: str, rows: int, date_done: str) -> None:
    """As Db._fill on Celery's PostgreSQL tables, in one statement on the server; ``date_done``
    is the SQL for the g-th result's date."""
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TEMP TABLE sample AS SELECT *, row_number() OVER (ORDER BY id) AS rn FROM celery_taskmeta")
        c.exec_driver_sql(f"""
            INSERT INTO celery_taskmeta (id, task_id, status, result, date_done, traceback, children, name, args, kwargs,
                                         worker, retries, queue, stamps)
            SELECT nextval('task_id_sequence'), gen_random_uuid()::text, s.status, s.result,
                   {date_done},
                   s.traceback, s.children, s.name, s.args, s.kwargs, s.worker, s.retries, s.queue, s.stamps
            FROM generate_series(1, {rows}) g JOIN sample s ON s.rn = mod(g, 100) + 1""")
        c.exec_driver_sql("DELETE FROM celery_taskmeta WHERE task_id LIKE 'sample-%%'")
    engine.dispose()
