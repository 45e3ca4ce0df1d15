"""Every result backend behind one interface, for the Source and Target contract suites: Celery's
database backend on SQLite, PostgreSQL and MariaDB, django-celery-results on the same three,
and Celery's Redis backend. Each writes results with the backend's own code (Celery's
DatabaseBackend and RedisBackend in this process; django-celery-results in one Django process
per module, tests/django_results.py ``serve``) and reads them back with AsyncResult.

django-celery-results' side is in tests/django_backend.py. Every test gets the same results (``write_standard``): OLD finished results and a saved group,
older than the cutoff it returns; one result that is not finished (STARTED) and one YOUNG one.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from conftest import MYSQL_ADMIN, PG_ADMIN, _fresh_database, age_rows, celery_app, table_rows
from helpers import REDIS_URL, keys, redis_app

from celery_archive import RunConfig, parse_duration

OK = ("ok-0", "ok-1", "ok-2")
OLD_TASKS = (*OK, "fail-0", "revoked-0")
GROUP = "grp-0"
OLD = (*OLD_TASKS, GROUP)  # what a run past the cutoff takes
UNFINISHED, YOUNG = "started-0", "young-0"  # what it never takes
STATES = {**dict.fromkeys(OK, "SUCCESS"), "fail-0": "FAILURE", "revoked-0": "REVOKED"}
SECRET = "S3cret-pw-9"
READY = ("SUCCESS", "FAILURE", "REVOKED")


def value(tid: str) -> dict[str, Any]:
    return {"n": int(tid.rsplit("-", 1)[1]), "items": [1, 2, 3], "who": tid}


def own_connections(port: int | None = None, path: str | None = None) -> int:
    """Connections this process holds: TCP sockets to ``port`` on 127.0.0.1, or open files at
    ``path`` (after a garbage collection: apps and clients no longer referred to let go of theirs)."""
    import gc

    gc.collect()
    fds = Path("/proc/self/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    if path is not None:
        return sum(t == path for t in targets)
    inodes = {t[len("socket:["):-1] for t in targets if t.startswith("socket:[")}
    n = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[2].rsplit(":", 1)[1], 16) == port and f[3] == "01" and f[9] in inodes:  # 01: ESTABLISHED
                n += 1
    return n


class Backend:
    """One result backend holding results; subclasses write and read them as Celery does."""

    kind: str
    url: str  # the --source / --into URL celery-archive takes
    port: int | None = None
    app: Any = None  # the Celery app writing (Celery's own backends)
    where: str  # what describe() names: a table or a key pattern

    def config(self, sink: Path | str = "unused", older_than: str = "1s", **kw: Any) -> RunConfig:
        return RunConfig(source=self.url, sink=str(sink), older_than=parse_duration(older_than), **kw)

    # writing, as the backend's own code does (``app``'s, where it runs in this process)
    def store(self, tid: str, result: Any, state: str = "SUCCESS") -> None:
        self.app.backend.store_result(tid, result, state, request=_request(tid, "shop.checkout"))

    def fail(self, tid: str) -> None:
        _fail(self.app.backend, tid)

    def revoke(self, tid: str) -> None:
        self.app.backend.mark_as_revoked(tid, "terminated", request=_request(tid, "shop.slow"))

    def group(self, gid: str, children: list[str]) -> None:
        raise NotImplementedError

    def forget(self, tid: str) -> None:
        """Remove a result (AsyncResult.forget(), as an app does)."""
        self.app.backend.forget(tid)

    def split(self) -> dt.datetime:
        """A cutoff (naive UTC) that every result written so far is older than and every one
        written after is not."""
        raise NotImplementedError

    # reading, through Celery's AsyncResult / GroupResult
    def get(self, tid: str) -> tuple[str, Any]:
        """(state, result: ``get()``'s value, an exception's repr) as the app sees it."""
        raise NotImplementedError

    def group_children(self, gid: str) -> list[str] | None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """Everything the backend holds, exactly as stored."""
        raise NotImplementedError

    def held(self) -> set[str]:
        """Task and group ids the backend holds."""
        raise NotImplementedError

    def connections(self) -> int:
        """Connections (or open files) of this process to the backend."""
        return own_connections(port=self.port)

    def reset(self) -> None:
        raise NotImplementedError

    # URLs for the error and display checks
    def with_password(self) -> str:
        """This backend's URL with the user's password SECRET in it."""
        raise NotImplementedError

    def unreachable(self) -> str:
        """A URL of this kind (with SECRET) that no server answers."""
        raise NotImplementedError

    def no_results_here(self) -> tuple[RunConfig, str]:
        """A reachable place that holds no results store, and what open()'s error names."""
        raise NotImplementedError

    def odd(self) -> tuple[str, str] | None:
        """Store something a run must leave alone; (its counts reason, a text its example holds)."""
        return None

    def close(self) -> None:
        pass


class OnDatabase(Backend):
    """A backend in a SQL database (``db``: its SQLAlchemy URL); ``scheme`` starts celery-archive's URL of it."""

    scheme: str

    def __init__(self, kind: str, db: str) -> None:
        self.kind, self.db, self.url = kind, db, self.scheme + db
        self.dialect = sa.make_url(db).get_backend_name()
        self.port = {"postgresql": 5432, "mysql": 3306}.get(self.dialect)

    def connections(self) -> int:
        if self.dialect == "sqlite":
            return own_connections(path=sa.make_url(self.db).database)
        return super().connections()

    def with_password(self) -> str:
        """The URL with the user's password SECRET (SQLite has none: it shows as given)."""
        return self.url.replace("://root@", f"://root:{SECRET}@").replace("://postgres@", f"://postgres:{SECRET}@")

    def unreachable(self) -> str:
        u = sa.make_url(self.db)
        if u.get_backend_name() == "sqlite":
            return f"{self.scheme}sqlite:///{Path(u.database or '').parent / 'no-such-dir' / 'r.db'}"
        return f"{self.scheme}{u.drivername}://someone:{SECRET}@127.0.0.1:1/nothing"


class SqlBackend(OnDatabase):
    """Celery's DatabaseBackend (SQLAlchemy) in this process."""

    scheme = "db+"

    def __init__(self, kind: str, db: str) -> None:
        super().__init__(kind, db)
        self.app = celery_app(self.url)
        self.where = "celery_taskmeta"

    def group(self, gid: str, children: list[str]) -> None:
        from celery.result import AsyncResult, GroupResult

        GroupResult(gid, [AsyncResult(c, app=self.app) for c in children], app=self.app).save(backend=self.app.backend)

    def split(self) -> dt.datetime:
        age_rows(self.url, 40)
        age_rows(self.url, 40, table="celery_tasksetmeta")
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=20)

    def get(self, tid: str) -> tuple[str, Any]:
        return _get(celery_app(self.url), tid)

    def group_children(self, gid: str) -> list[str] | None:
        g = celery_app(self.url).GroupResult.restore(gid)
        return None if g is None else [r.id for r in g.results]

    def snapshot(self) -> dict[str, Any]:
        return {t: table_rows(self.url, t) for t in ("celery_taskmeta", "celery_tasksetmeta")}

    def held(self) -> set[str]:
        return {str(k) for rows in self.snapshot().values() for k in rows}

    def reset(self) -> None:
        self.store("seed", 1)  # Celery makes its tables on first use
        engine = sa.create_engine(self.db)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM celery_taskmeta")
            conn.exec_driver_sql("DELETE FROM celery_tasksetmeta")
        engine.dispose()

    def no_results_here(self) -> tuple[RunConfig, str]:
        return self.config(task_table="no_such_results"), "no_such_results"

    def odd(self) -> tuple[str, str]:
        self.store("odd-0", 1)  # then its task id is lost (a hand-made row, an old migration)
        engine = sa.create_engine(self.db)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE celery_taskmeta SET task_id = NULL WHERE task_id = 'odd-0'")
        engine.dispose()
        age_rows(self.url, 40, where="task_id IS NULL")
        return "no_task_id", "celery_taskmeta"


class RedisBackend(Backend):
    """Celery's RedisBackend in this process, under a global_keyprefix of the test's own."""

    port = 6379

    def __init__(self) -> None:
        self.kind, self.url, self.where = "redis", REDIS_URL, "celery-task-meta-*"
        self.prefix = f"ca{secrets.token_hex(4)}_"
        self.app = redis_app(self.prefix)

    def config(self, sink: Path | str = "unused", older_than: str = "1s", **kw: Any) -> RunConfig:
        return super().config(sink, older_than, key_prefix=self.prefix, **kw)

    def group(self, gid: str, children: list[str]) -> None:
        from celery.result import AsyncResult, GroupResult

        # Celery stores no date for a saved group: its age is result_expires (a day) less the TTL
        # left, so a group saved an hour ago is one whose TTL is 23 hours (the app's result_expires)
        app = redis_app(self.prefix, result_expires=dt.timedelta(hours=23))
        app.backend.save_group(gid, GroupResult(gid, [AsyncResult(c, app=app) for c in children], app=app))

    def split(self) -> dt.datetime:
        # date_done is Celery's clock to the microsecond: the instant now is after every one
        # written (and the group is an hour old, above)
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def get(self, tid: str) -> tuple[str, Any]:
        return _get(redis_app(self.prefix), tid)  # a new app: Celery caches results it has read

    def group_children(self, gid: str) -> list[str] | None:
        g = redis_app(self.prefix).GroupResult.restore(gid)
        return None if g is None else [r.id for r in g.results]

    def snapshot(self) -> dict[str, Any]:
        return keys(self.prefix)

    def held(self) -> set[str]:
        return {k.rsplit("-meta-", 1)[1] for k in keys(self.prefix)}

    def reset(self) -> None:
        self.close()  # the keys go; the prefix stays the module's (restored keys keep theirs)

    def with_password(self) -> str:
        return f"redis://:{SECRET}@127.0.0.1:6379/0"

    def unreachable(self) -> str:
        return f"redis://:{SECRET}@127.0.0.1:1/0"

    def no_results_here(self) -> tuple[RunConfig, str]:
        cfg = RunConfig(source="redis://127.0.0.1:6379/99", sink="unused", older_than=parse_duration("1s"))
        return cfg, "database number"  # Redis has no tables: a database the server does not have

    def odd(self) -> tuple[str, str]:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.setex(f"{self.prefix}celery-task-meta-not-ours", 86400, b"\x00\x01 some other application's value")
        client.close()
        return "not_celery", "not-ours"

    def close(self) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{self.prefix}*"):
            client.delete(key)
        client.close()


class _ByKey:
    """Celery's backend calls (store_result(tid, ...), mark_as_failure(tid, ...), forget(tid)...)
    made through the RedisBackend of the cluster primary that serves the id's key."""

    def __init__(self, of: Any) -> None:
        self._of = of

    def __getattr__(self, name: str) -> Any:
        return lambda tid, *a, **kw: getattr(self._of(tid).backend, name)(tid, *a, **kw)


class RedisClusterBackend(RedisBackend):
    """Celery's RedisBackend keys on the test Redis Cluster: Celery has no cluster backend, so
    each result is written by a RedisBackend pointed at the primary that serves its key's slot."""

    def __init__(self, ports: list[int]) -> None:
        from redis.cluster import RedisCluster

        self.kind, self.where = "redis-cluster", "celery-task-meta-*"
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/0"
        self.ports = ports
        self.prefix = f"ca{secrets.token_hex(4)}_"
        self.client = RedisCluster(host="127.0.0.1", port=ports[0])
        self.app = type("ByKey", (), {"backend": _ByKey(self.node_app)})()

    def node_app(self, tid: str, **conf: Any) -> Any:
        key = f"{self.prefix}celery-task-meta-{tid}" if tid != GROUP else f"{self.prefix}celery-taskset-meta-{tid}"
        self.client.nodes_manager.initialize()
        return redis_app(self.prefix, url=f"redis://127.0.0.1:{self.client.get_node_from_key(key).port}/0", **conf)

    def group(self, gid: str, children: list[str]) -> None:
        from celery.result import AsyncResult, GroupResult

        app = self.node_app(gid, result_expires=dt.timedelta(hours=23))  # an hour old: see RedisBackend.group
        app.backend.save_group(gid, GroupResult(gid, [AsyncResult(c, app=app) for c in children], app=app))

    def get(self, tid: str) -> tuple[str, Any]:
        return _get(self.node_app(tid), tid)

    def group_children(self, gid: str) -> list[str] | None:
        g = self.node_app(gid).GroupResult.restore(gid)
        return None if g is None else [r.id for r in g.results]

    def snapshot(self) -> dict[str, Any]:
        out = {}
        for node in self.client.get_primaries():
            out.update(keys(self.prefix, f"redis://127.0.0.1:{node.port}/0"))
        return out

    def held(self) -> set[str]:
        return {k.rsplit("-meta-", 1)[1] for k in self.snapshot()}

    def connections(self) -> int:
        return sum(own_connections(port=p) for p in self.ports)

    def with_password(self) -> str:
        return f"redis+cluster://:{SECRET}@127.0.0.1:{self.ports[0]}/0"

    def unreachable(self) -> str:
        return f"redis+cluster://:{SECRET}@127.0.0.1:1/0"

    def no_results_here(self) -> tuple[RunConfig, str]:
        cfg = RunConfig(source="redis+cluster://127.0.0.1:6379/0", sink="unused", older_than=parse_duration("1s"))
        return cfg, "cluster-enabled"  # a Redis server that is no cluster node

    def odd(self) -> tuple[str, str]:
        self.client.setex(f"{self.prefix}celery-task-meta-not-ours", 86400, b"\x00\x01 some other application's value")
        return "not_celery", "not-ours"

    def close(self) -> None:
        for key in self.snapshot():
            self.client.delete(key)


def _request(tid: str, name: str) -> Any:
    from celery.app.task import Context

    return Context(id=tid, task=name, args=[1, "two"], kwargs={"k": 3}, hostname="worker1@host", retries=1,
                   delivery_info={"routing_key": "billing"})


def _fail(backend: Any, tid: str) -> None:
    import traceback

    try:
        raise ValueError("card declined", 7)
    except ValueError as exc:
        backend.mark_as_failure(tid, exc, traceback=traceback.format_exc(), request=_request(tid, "shop.charge"))


def _get(app: Any, tid: str) -> tuple[str, Any]:
    r = app.AsyncResult(tid)
    if r.state not in READY:
        return r.state, r.result
    got = r.get(timeout=5, propagate=False)
    return r.state, repr(got) if isinstance(got, BaseException) else got


def write_standard(b: Backend) -> dt.datetime:
    """The results every contract test starts from; returns the cutoff between OLD and YOUNG."""
    b.group(GROUP, ["ok-0", "ok-1"])
    for tid in OK:
        b.store(tid, value(tid))
    b.fail("fail-0")
    b.revoke("revoked-0")
    b.store(UNFINISHED, {"pid": 1}, "STARTED")
    cutoff = b.split()
    b.store(YOUNG, value("young-0"))
    return cutoff


def open_backend(kind: str, tmp: Path, cluster: list[int] | None = None) -> Iterator[Backend]:
    """A backend of ``kind`` for a whole test module, on databases of its own (dropped after);
    ``cluster``: the ports of the test Redis Cluster, for redis-cluster."""
    family, _, dialect = kind.partition("-")
    if family == "redis":
        b: Backend = RedisClusterBackend(cluster or []) if dialect == "cluster" else RedisBackend()
        yield b
        b.close()
        return
    dbs: list[Iterator[str]] = []

    def database() -> str:
        if dialect == "sqlite":
            path = tmp / f"{secrets.token_hex(4)}.db"
            sa.create_engine(f"sqlite:///{path}").connect().close()
            return f"sqlite:///{path}"
        gen = _fresh_database(PG_ADMIN if dialect == "postgresql" else MYSQL_ADMIN, " WITH (FORCE)" if dialect == "postgresql" else "")
        dbs.append(gen)
        return next(gen)

    if family == "sql":
        b = SqlBackend(kind, database())
    else:
        from django_backend import DjangoBackend

        b = DjangoBackend(kind, database(), database())
    try:
        yield b
    finally:
        b.close()
        for gen in dbs:
            next(gen, None)
