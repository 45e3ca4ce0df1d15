"""Shared test helpers: reading an archive the way a user would, a clock for runs, and
Celery's Redis backend on the test server."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from celery_archive import RunConfig, parse_duration, run
from celery_archive.pipeline.run import RunReport

REDIS_URL = os.environ.get("CA_TEST_REDIS", "redis://127.0.0.1:6379/0")


def later(seconds: float = 5) -> dt.datetime:
    """An instant ``seconds`` from now (aware UTC): a run given ``now=later()`` counts ages as
    if that much time had passed since the results were written, without waiting for it."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


def archive(source: str, sink: Path, older_than: str = "30d", now: dt.datetime | None = None, **kw: Any) -> RunReport:
    """One run (in this process); ``now`` is the instant it counts ages from (default: the clock)."""
    report = run(RunConfig(source=source, sink=str(sink), older_than=parse_duration(older_than), **kw), now=now)
    assert isinstance(report, RunReport)
    return report


def read_archive(sink: Path, fmt: str = "parquet") -> dict[str, dict[str, Any]]:
    """task_id -> record, read with pyarrow's dataset API over the Hive layout."""
    files = [str(p) for p in sorted((sink / "data").rglob("*")) if p.is_file()]
    if not files:
        return {}
    if fmt == "parquet":
        table = ds.dataset(files, format="parquet", partitioning="hive", partition_base_dir=str(sink / "data")).to_table()
        rows = table.to_pylist()
    else:
        import duckdb

        con = duckdb.connect()
        rows = con.sql(f"select * from read_json_auto({files!r}, hive_partitioning=true, format='newline_delimited')").to_arrow_table().to_pylist()
    out = {}
    for r in rows:
        assert r["task_id"] not in out, f"{r['task_id']} archived twice"
        out[r["task_id"]] = r
    return out


def utc(ts: dt.datetime) -> dt.datetime:
    """A stored naive UTC datetime (or aware one) as an aware UTC datetime."""
    return ts.replace(tzinfo=dt.timezone.utc) if ts.tzinfo is None else ts.astimezone(dt.timezone.utc)


def data_files(sink: Path) -> list[Path]:
    return sorted(p for p in (sink / "data").rglob("*") if p.is_file() and not p.name.startswith(".")) if (sink / "data").exists() else []


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


class Hostile:
    """Unpickling this runs a shell command, if the unpickler lets it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def redis_app(prefix: str, url: str = REDIS_URL, serializer: str = "json", **conf: Any) -> Any:
    """A Celery app whose RedisBackend writes under the global_keyprefix ``prefix``."""
    from celery import Celery

    app = Celery(f"r{secrets.token_hex(3)}", backend=url, set_as_current=False)
    app.conf.update(result_serializer=serializer, result_accept_content=[serializer, "json"], accept_content=[serializer, "json"],
                    result_extended=True, result_backend_transport_options={"global_keyprefix": prefix}, **conf)
    return app


def keys(prefix: str, url: str = REDIS_URL) -> dict[str, bytes]:
    """Every key under ``prefix`` -> its value."""
    import redis

    client = redis.Redis.from_url(url)
    out = {k.decode(): client.get(k) or b"" for k in client.scan_iter(match=f"{prefix}*")}
    client.close()
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
