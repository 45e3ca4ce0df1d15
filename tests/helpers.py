"""Shared test helpers: reading an archive the way a user would."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from celery_archive import RunConfig, parse_duration, run
from celery_archive.pipeline.run import RunReport


def archive(source: str, sink: Path, older_than: str = "30d", **kw: Any) -> RunReport:
    report = run(RunConfig(source=source, sink=str(sink), older_than=parse_duration(older_than), **kw))
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
