"""Fixtures on real servers: a fresh PostgreSQL and MariaDB database per test session (dropped
after), a fresh SQLite file per test, and Celery apps whose own backend code writes results.

The servers are started by scripts/services.sh; a missing server fails the tests, it never
skips them.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import free_port, moto_server

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("CA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("CA_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/")
PY56 = ROOT / ".venv56" / "bin" / "python"
CELERY_VENVS = {"5.3": ("5.3.6", ".venv53"), "5.4": ("5.4.0", ".venv54"), "5.5": ("5.5.3", ".venv55"), "5.6": ("5.6.3", ".venv56")}
"""Celery releases the tests write results with, each in a venv of its own (scripts/test.sh)."""
BACKENDS = ("sqlite", "postgresql", "mysql")


def _admin(url: str) -> sa.Engine:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.fail(f"database server at {url} is not reachable ({exc.orig}); run `bash scripts/services.sh`")
    return engine


def _fresh_database(admin_url: str, drop_suffix: str = "", setup: str = "") -> Iterator[str]:
    """A database made for this test session on the server behind ``admin_url``, dropped after;
    ``setup`` (a statement, ``{name}`` the database's) runs right after it is made."""
    name = f"ca_test_{secrets.token_hex(4)}"
    admin = _admin(admin_url)
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
        if setup:
            c.exec_driver_sql(setup.format(name=name))
    yield str(sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{drop_suffix}")
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    yield from _fresh_database(PG_ADMIN, " WITH (FORCE)")


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    yield from _fresh_database(MYSQL_ADMIN)


def reset_database(url: str) -> None:
    """Drop every table and sequence, so Celery creates its tables anew."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        md = sa.MetaData()
        md.reflect(conn)
        md.drop_all(conn)
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS archive_schema CASCADE")
            for (seq,) in conn.exec_driver_sql("SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema='public'"):
                conn.exec_driver_sql(f'DROP SEQUENCE IF EXISTS "{seq}"')
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A Celery ``db+`` result_backend URL on an empty database of each kind."""
    return db_url(request, request.param, tmp_path)


def db_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"db+sqlite:///{tmp_path / 'results.db'}"
    url = request.getfixturevalue("pg_url" if kind == "postgresql" else "mysql_url")
    reset_database(url)
    return "db+" + url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"db+sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def pg_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return db_url(request, "postgresql", tmp_path)


def celery_app(url: str, serializer: str = "json", extended: bool = True, **conf: Any) -> Any:
    """A Celery app whose DatabaseBackend writes into ``url``."""
    from celery import Celery

    app = Celery(f"t{secrets.token_hex(3)}", backend=url, set_as_current=False)
    app.conf.update(result_serializer=serializer, result_accept_content=[serializer, "json"],
                    accept_content=[serializer, "json"], result_extended=extended, **conf)
    return app


@contextmanager
def pooled(app: Any) -> Iterator[Any]:
    """``app``'s database backend as in a prefork worker's child: one pooled connection for many
    writes instead of a new connection per result (Celery's NullPool before a fork), closed after.
    Celery's own code still writes every row; on MariaDB this makes 400 writes ~2 s, not ~45 s."""
    manager = app.backend.session_manager
    manager._after_fork()
    try:
        yield app.backend
    finally:
        manager.invalidate(app.backend.url)
        manager.forked = False


def run_celery56(url: str, code: str) -> str:
    """Run ``code`` with the real Celery 5.6.3 (``app`` bound to ``url``); returns stdout."""
    if not PY56.exists():
        pytest.fail(f"{PY56} is missing: `bash scripts/test.sh` installs Celery 5.6.3 there")
    prelude = (
        "import celery, datetime\nassert celery.__version__ == '5.6.3', celery.__version__\n"
        f"app = celery.Celery('legacy', backend={url!r})\napp.conf.result_extended = True\n"
    )
    proc = subprocess.run([str(PY56), "-c", prelude + code], capture_output=True, text=True, timeout=120)
    if proc.returncode:
        pytest.fail(f"celery 5.6.3 script failed:\n{proc.stderr}")
    return proc.stdout


def faketime_env(at: dt.datetime) -> dict[str, str]:
    """Environment that starts a process's clock at ``at`` (UTC), through libfaketime: the real
    Celery (or celery-archive) then runs as it would at that moment."""
    import libfaketime

    env = dict(libfaketime.get_reload_information()[1])
    env.update(FAKETIME="@" + at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), TZ="UTC",
               DONT_FAKE_MONOTONIC="1")
    return env


def run_celery(version: str, code: str, at: dt.datetime | None = None, env: dict[str, str] | None = None,
               clock: Path | None = None) -> str:
    """Run ``code`` with the real Celery ``version`` (``5.3`` ... ``5.6``, or ``current``: this
    venv's), its clock at ``at`` if given, or (``clock``: a file) set to whatever instant the
    code gives ``set_clock(datetime)`` before each write; returns stdout."""
    if version == "current":
        python, prelude = sys.executable, ""
    else:
        release, venv = CELERY_VENVS[version]
        python = str(ROOT / venv / "bin" / "python")
        if not Path(python).exists():
            pytest.fail(f"{python} is missing: `bash scripts/test.sh` installs Celery {release} there")
        prelude = f"import celery\nassert celery.__version__ == {release!r}, celery.__version__\n"
    extra = faketime_env(at) if at else {}
    if clock is not None:
        import libfaketime

        clock.write_text(dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
        extra = {**libfaketime.get_reload_information()[1], "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1",
                 "TZ": "UTC", "DONT_FAKE_MONOTONIC": "1"}
        # a running clock from that instant on: Celery's INSERT then UPDATE of a row see two
        # instants (a stopped clock makes SQLAlchemy skip the UPDATE of an equal date_done)
        prelude += (f"def set_clock(ts):\n    open({str(clock)!r}, 'w').write(ts.strftime('@%Y-%m-%d %H:%M:%S'))\n")
    proc = subprocess.run([python, "-c", prelude + code], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {}), **extra})
    if proc.returncode:
        pytest.fail(f"celery {version} script failed:\n{proc.stderr}")
    return proc.stdout


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``celery-archive`` command."""
    exe = Path(sys.executable).parent / "celery-archive"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def table_rows(url: str, table: str = "celery_taskmeta", schema: str | None = None) -> dict[str, dict[str, Any]]:
    """task_id -> the stored row, exactly as the database holds it."""
    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.connect() as conn:
        t = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=conn)
        key = "task_id" if "task_id" in t.c else "taskset_id"
        rows = {r._mapping[key]: dict(r._mapping) for r in conn.execute(sa.select(t))}
    engine.dispose()
    return rows


def age_rows(url: str, days: int, where: str = "1=1", table: str = "celery_taskmeta", schema: str | None = None) -> None:
    """Move date_done back by ``days`` (results that piled up), in each dialect's SQL."""
    engine = sa.create_engine(url.removeprefix("db+"))
    name = f"{schema}.{table}" if schema else table
    expr = {
        "sqlite": f"strftime('%Y-%m-%d %H:%M:%f000', date_done, '-{days} days')",
        "postgresql": f"date_done - interval '{days} days'",
        "mysql": f"date_done - interval {days} day",
    }[engine.dialect.name]
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {name} SET date_done = {expr} WHERE date_done IS NOT NULL AND {where}")
    engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (real HTTP); boto3 finds it through AWS_ENDPOINT_URL."""
    server, env = moto_server()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the S3 server."""
    import boto3

    name = f"ca-{secrets.token_hex(4)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _python313() -> str | None:
    """LocalStack's runtime needs Python 3.13 (see ../shared/notes/s3.md)."""
    import shutil

    candidates = [os.environ.get("PYTHON313", ""), str(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions/3.13.0/bin/python3.13"),
                  shutil.which("python3.13") or ""]
    for c in candidates:
        if c and subprocess.run([c, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 13))"], capture_output=True).returncode == 0:
            return c
    return None


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """LocalStack's runtime as a host process on 127.0.0.1 (localstack/start.sh), for the S3
    checks moto cannot do. Runs wherever Python 3.13 is present (CI has it): it fails there if
    LocalStack does not start; only a machine without 3.13 skips these tests."""
    py = _python313()
    if py is None and not (ROOT / "localstack/.venv/bin/python").exists():
        pytest.skip("LocalStack's runtime needs Python 3.13, which this machine does not have")
    data = tmp_path_factory.mktemp("localstack")
    proc = subprocess.run(["bash", str(ROOT / "localstack/start.sh"), str(free_port()), str(data)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON313": py or ""})
    assert proc.returncode == 0, f"LocalStack did not start: {proc.stderr[-2000:]}"
    yield proc.stdout.strip()
    subprocess.run(["bash", str(ROOT / "localstack/stop.sh"), str(data)], check=True, timeout=30)


@pytest.fixture
def on_localstack(localstack: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's boto3 (in-process and in the commands it runs) pointed at LocalStack."""
    for k, v in {"AWS_ENDPOINT_URL": localstack, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    return localstack


def s3_client(endpoint: str, region: str = "us-east-1", **creds: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        aws_access_key_id=creds.get("key", "testing"), aws_secret_access_key=creds.get("secret", "testing-secret"))


def new_bucket(client: Any, lock: bool = False) -> str:
    name = f"ca-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if lock else {}))
    return name


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The Redis server of the tests (CA_TEST_REDIS), checked to answer."""
    import redis
    from helpers import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}); run `bash scripts/services.sh`")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def prefix(redis_server: str) -> Iterator[str]:
    """A global_keyprefix of this test's own on the Redis server; its keys are removed after."""
    import redis

    p = f"ca{secrets.token_hex(4)}_"
    yield p
    client = redis.Redis.from_url(redis_server)
    for key in client.scan_iter(match=f"{p}*"):
        client.delete(key)
    client.close()


BACKEND_KINDS = ("sql-sqlite", "sql-postgresql", "sql-mysql", "django-sqlite", "django-postgresql", "django-mysql", "redis",
                 "redis-cluster")
"""Every result backend the contract suites run against (tests/backends.py)."""


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Each result backend (tests/backends.py), made once per test module."""
    from backends import open_backend

    if request.param == "redis":
        request.getfixturevalue("redis_server")
    cluster = request.getfixturevalue("redis_cluster") if request.param == "redis-cluster" else None
    yield from open_backend(request.param, tmp_path_factory.mktemp(request.param), cluster)


@pytest.fixture
def backend(served: Any) -> Any:
    """Each result backend, emptied for this test."""
    served.reset()
    return served


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A real Redis Cluster of 3 primaries (no replicas) on free ports of 127.0.0.1, started for
    the session (redis-server --cluster-enabled yes, redis-cli --cluster create) and shut down
    after; its ports. Tests work under a key prefix of their own and may move slots about."""
    from helpers import redis_cluster_started

    with redis_cluster_started(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield ports
