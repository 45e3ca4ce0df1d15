"""Formats, layout and schemas: what DuckDB, pyarrow and a JSON Schema validator see."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import duckdb
import jsonschema
import orjson
import pyarrow.parquet as pq
import pytest
from conftest import age_rows, celery_app, pooled, table_rows
from helpers import archive, data_files, read_archive

from celery_archive.formats import read_columns
from celery_archive.schemas import RECORD_VERSION, arrow_schema, field_names, json_schema, record_fields

GLOBS = {"parquet": "*.parquet", ("jsonl", None): "*.jsonl", ("jsonl", "zstd"): "*.jsonl.zst", ("jsonl", "gzip"): "*.jsonl.gz"}


def fill(url: str, n: int = 120) -> None:
    with pooled(celery_app(url)) as backend:
        for i in range(n):
            backend.store_result(f"f{i:04d}", {"i": i, "text": secrets.token_hex(150)}, "SUCCESS" if i % 9 else "FAILURE")
    for days in range(40, 44):
        age_rows(url, days - 39 if days > 40 else 40, f"task_id >= 'f{(days - 40) * 30:04d}'")


@pytest.mark.parametrize("fmt,compression", [("parquet", None), ("jsonl", None), ("jsonl", "zstd"), ("jsonl", "gzip")])
def test_duckdb_reads_the_archive_as_it_is(sqlite_url: str, tmp_path: Path, fmt: str, compression: str | None) -> None:
    fill(sqlite_url)
    stored = table_rows(sqlite_url)
    by_day: dict[str, int] = {}
    for r in stored.values():
        day = r["date_done"].date().isoformat()
        by_day[day] = by_day.get(day, 0) + 1
    sink = tmp_path / "archive"
    report = archive(sqlite_url, sink, format=fmt, compression=compression, max_file_bytes=4096, batch_size=8)
    assert report.files > len(by_day), "files should have rolled at 4 KiB"
    assert all(p.stat().st_size < 4096 + 8 * 2048 for p in data_files(sink))
    pattern = f"{sink}/data/*/{GLOBS[fmt] if fmt == 'parquet' else GLOBS[(fmt, compression)]}"
    reader = "read_parquet" if fmt == "parquet" else "read_json_auto"
    rows = duckdb.sql(f"select date::varchar, count(*), count(distinct task_id), sum((status = 'FAILURE')::int) "
                      f"from {reader}('{pattern}', hive_partitioning=true) group by 1 order by 1").fetchall()
    assert {d: n for d, n, _, _ in rows} == by_day
    assert all(n == distinct for _, n, distinct, _ in rows)
    assert sum(f for *_, f in rows) == sum(1 for r in stored.values() if r["status"] == "FAILURE")
    one = duckdb.sql(f"select result::json->>'i', name from {reader}('{pattern}', hive_partitioning=true) "
                     f"where task_id = 'f0007'").fetchall()
    assert one == [("7", None)]
    for path in data_files(sink):
        assert path.parent.name.startswith("date=")
        if fmt == "jsonl":
            batches = list(read_columns(path, "jsonl", compression, ["task_id", "raw_result"]))
            for tid, raw in zip(batches[0]["task_id"], batches[0]["raw_result"]):
                assert raw == stored[tid]["result"]


def test_parquet_files_carry_the_record_schema(sqlite_url: str, tmp_path: Path) -> None:
    fill(sqlite_url, 20)
    archive(sqlite_url, tmp_path / "a")
    for path in data_files(tmp_path / "a"):
        schema = pq.read_schema(path)
        assert schema.equals(arrow_schema(), check_metadata=False)
        assert schema.metadata[b"celery_archive.record_version"] == str(RECORD_VERSION).encode()
        meta = pq.ParquetFile(path).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"


def test_schema_files_agree() -> None:
    arrow = {f["name"]: f for f in record_fields()}
    js = json_schema("record")
    assert list(js["properties"]) == list(arrow) == list(field_names())
    assert set(js["required"]) == set(arrow)
    for name, f in arrow.items():
        types = js["properties"][name]["type"]
        assert ("null" in types) == f["nullable"], name
        assert (js["properties"][name].get("contentEncoding") == "base64") == (f["type"] == "binary"), name


def test_jsonl_lines_and_manifests_validate(sqlite_url: str, tmp_path: Path) -> None:
    fill(sqlite_url, 30)
    sink = tmp_path / "a"
    report = archive(sqlite_url, sink, format="jsonl")
    record_validator = jsonschema.Draft202012Validator(json_schema("record"), format_checker=jsonschema.FormatChecker())
    lines = [orjson.loads(line) for p in data_files(sink) for line in p.read_bytes().splitlines()]
    assert len(lines) == 30
    for line in lines:
        record_validator.validate(line)
    manifest = json.loads((sink / "manifests" / f"{report.run_id}.json").read_text())
    jsonschema.Draft202012Validator(json_schema("manifest"), format_checker=jsonschema.FormatChecker()).validate(manifest)
    assert manifest["totals"]["rows"] == 30 and "password" not in json.dumps(manifest)
    assert sum(f["rows"] for f in manifest["files"]) == 30


def test_archive_holds_no_password(tmp_path: Path, pg_backend: str) -> None:
    """The source URL is recorded without its password in records and manifests."""
    import sqlalchemy as sa

    app = celery_app(pg_backend)
    app.backend.store_result("p0", 1, "SUCCESS")
    age_rows(pg_backend, 40)
    with_pw = "db+" + sa.make_url(pg_backend.removeprefix("db+")).set(password="hunter2-Secret").render_as_string(hide_password=False)
    archive(with_pw, tmp_path / "a")  # trust auth accepts any password
    rec = read_archive(tmp_path / "a")["p0"]
    assert "hunter2" not in rec["source"] and "***" in rec["source"]
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes()
