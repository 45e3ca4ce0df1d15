"""Every stored format Celery writes, decoded safely and kept byte for byte."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import age_rows, celery_app, db_url, run_celery56, table_rows
from helpers import archive, read_archive


class Hostile:
    """Unpickling this runs a shell command, if the unpickler lets it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_archived_not_executed(sqlite_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    app = celery_app(sqlite_url, serializer="pickle")
    app.backend.store_result("evil-0", Hostile(marker), "SUCCESS")  # Celery pickles it as it would
    app.backend.store_result("fine-0", {"plain": [1, 2]}, "SUCCESS")
    age_rows(sqlite_url, 40)
    stored = table_rows(sqlite_url)
    assert b"system" in stored["evil-0"]["result"]

    report = archive(sqlite_url, tmp_path / "archive", serializer="pickle")

    assert not marker.exists(), "the hostile pickle was executed"
    rec = read_archive(tmp_path / "archive")
    assert rec["evil-0"]["result"] is None
    assert rec["evil-0"]["decode_error"] == "result: refused to load posix.system: only plain data types are admitted"
    assert rec["evil-0"]["raw_result"] == stored["evil-0"]["result"]
    assert json.loads(rec["fine-0"]["result"]) == {"plain": [1, 2]}
    assert report.deleted == 2  # archived losslessly as bytes, so it may go


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_celery_56_pickled_rows(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    """Celery <= 5.6 stores a pickle in `result` whatever the serializer (PickleType)."""
    url = db_url(request, kind, tmp_path)
    marker = tmp_path / "pwned56"
    run_celery56(url, f"""
import os
class Hostile:
    def __reduce__(self): return (os.system, ('touch {marker}',))
b = app.backend
b.store_result('old-ok', {{'x': (1, 2), 'at': datetime.datetime(2025, 5, 6, 7, 8, 9)}}, 'SUCCESS')
try:
    raise KeyError('missing')
except KeyError as e:
    b.mark_as_failure('old-fail', e, traceback='Traceback: KeyError')
b.store_result('old-evil', Hostile(), 'SUCCESS')
from celery.result import GroupResult, AsyncResult
b.save_group('old-group', GroupResult('old-group', [AsyncResult('old-ok', app=app)], app=app))
""")
    age_rows(url, 40)
    age_rows(url, 40, table="celery_tasksetmeta")
    stored = table_rows(url)
    assert stored["old-ok"]["result"][:1] == b"\x80"  # a pickle, as 5.6 writes it
    assert "children" not in stored["old-ok"]

    report = archive(url, tmp_path / "archive")

    assert not marker.exists()
    rec = read_archive(tmp_path / "archive")
    assert report.deleted == 4 and set(rec) == {"old-ok", "old-fail", "old-evil", "old-group"}
    for tid in ("old-ok", "old-fail", "old-evil"):
        assert rec[tid]["storage_format"] == "celery-db-5.6"
        assert rec[tid]["raw_result"] == stored[tid]["result"]
    assert json.loads(rec["old-ok"]["result"]) == {"x": [1, 2], "at": "2025-05-06T07:08:09"}
    assert json.loads(rec["old-fail"]["result"]) == {"exc_type": "KeyError", "exc_message": ["missing"], "exc_module": "builtins"}
    assert rec["old-evil"]["result"] is None and "refused to load posix.system" in rec["old-evil"]["decode_error"]
    # a 5.6 GroupResult is a pickled Celery object: bytes only, with the reason
    assert rec["old-group"]["result"] is None and "celery" in rec["old-group"]["decode_error"]


def test_corrupt_payload_is_archived_as_bytes_and_the_run_continues(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(5):
        app.backend.store_result(f"t{i}", i, "SUCCESS")
    engine = sa.create_engine(sqlite_url.removeprefix("db+"))
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE celery_taskmeta SET result = X'7B22627574207472756E63' WHERE task_id = 't2'")
    age_rows(sqlite_url, 40)
    report = archive(sqlite_url, tmp_path / "archive")
    rec = read_archive(tmp_path / "archive")
    assert report.archived == 5
    assert rec["t2"]["result"] is None and rec["t2"]["raw_result"] == b'{"but trunc'
    assert rec["t2"]["decode_error"].startswith("result: cannot decode as json")
    assert [json.loads(rec[f"t{i}"]["result"]) for i in (0, 1, 3, 4)] == [0, 1, 3, 4]


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml", "pickle"])
def test_serializers(sqlite_url: str, tmp_path: Path, serializer: str) -> None:
    app = celery_app(sqlite_url, serializer=serializer)
    value = {"rows": list(range(50)), "name": "report", "nested": {"ok": True}}
    app.backend.store_result("c-0", value, "SUCCESS")
    assert app.AsyncResult("c-0").result == value
    age_rows(sqlite_url, 40)
    stored = table_rows(sqlite_url)["c-0"]["result"]
    archive(sqlite_url, tmp_path / "archive", serializer=serializer)
    rec = read_archive(tmp_path / "archive")["c-0"]
    assert rec["raw_result"] == stored
    assert json.loads(rec["result"]) == value, rec["decode_error"]
    assert rec["compression"] is None


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "lzma"])
def test_celery_57_compressed_payloads(compression: str) -> None:
    """Celery 5.7's result_compression (key-value backends; the DatabaseBackend ignores it)."""
    from celery import Celery

    from celery_archive.backends.codec import decode_column

    app = Celery("c", backend="redis://127.0.0.1:6379/15", set_as_current=False)
    app.conf.result_compression = compression
    value = {"big": "x" * 500, "n": [1, 2, 3]}
    payload = app.backend.encode(value)  # Celery's own encoder: magic header, content type, body
    assert payload.startswith(b"\x00celery-compressed\x00")
    texts, errors, compressions = decode_column([payload], "json", "result")
    assert errors == [None] and json.loads(texts[0] or "") == value
    assert compressions[0] and compressions[0] in payload.decode("latin-1")


def test_custom_table_names_and_schemas(pg_backend: str, tmp_path: Path) -> None:
    engine = sa.create_engine(pg_backend.removeprefix("db+"))
    with engine.begin() as c:
        c.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS archive_schema")
    engine.dispose()
    app = celery_app(pg_backend, database_table_names={"task": "my_results", "group": "my_groups"},
                     database_table_schemas={"task": "archive_schema", "group": "archive_schema"})
    try:
        app.backend.store_result("custom-0", "kept in a custom table", "SUCCESS")
        age_rows(pg_backend, 40, table="my_results", schema="archive_schema")
        report = archive(pg_backend, tmp_path / "archive", task_table="my_results", task_schema="archive_schema",
                         group_table="my_groups", group_schema="archive_schema")
        rec = read_archive(tmp_path / "archive")["custom-0"]
        assert rec["source_table"] == "archive_schema.my_results"
        assert json.loads(rec["result"]) == "kept in a custom table"
        assert report.deleted == 1
        assert table_rows(pg_backend, "my_results", schema="archive_schema") == {}
    finally:
        celery_app(pg_backend)  # Celery renames its model tables process-wide: put the defaults back


def test_pickle_restricted_unpickler_admits_plain_data_only() -> None:
    import datetime as dt
    import decimal
    import uuid

    from celery_archive.backends.codec import UnsafePayload, restricted_loads

    plain = {"s": {1, 2}, "f": frozenset([3]), "d": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
             "u": uuid.UUID(int=5), "m": decimal.Decimal("1.5"), "b": b"\x00\x01", "t": (1, [2]), "e": ValueError("x")}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        got = restricted_loads(pickle.dumps(plain, protocol=protocol))
        assert {k: v for k, v in got.items() if k != "e"} == {k: v for k, v in plain.items() if k != "e"}
    for hostile in (pickle.dumps(Hostile(Path("/tmp/x"))), pickle.dumps(sa.Table), pickle.dumps(Path("/etc"))):
        with pytest.raises(UnsafePayload):
            restricted_loads(hostile)


def test_plain_json_check_accepts_what_a_json_parser_accepts() -> None:
    """The fast check that lets stored JSON text be its own queryable copy (msgspec's syntax
    check + Arrow's UTF-8 check) accepts exactly what orjson's full parse does, on valid
    payloads and on many corrupted ones: bad syntax, bad UTF-8, encoded surrogates, controls."""
    import random

    import orjson

    from celery_archive.backends.codec import plain_json

    rng = random.Random(7)
    samples = [{"order": 1, "items": [1, 2.5, -3e5, None, True, False], "note": 'ok é ☃ 𝄞 \\ " \n'},
               [1, "x"], {"k": {"a": []}}, "text", 12, 1.5, None, [], {}]
    base = [json.dumps(s, ensure_ascii=False).encode() for s in samples]
    alphabet = b'{}[]",:0123456789.eE+-\\ntrufals \t\x00\x1f\x7f\x80\xc0\xed\xa0\xff\xf4\x90\xf0\x9dab/u'
    accepted = rejected = 0
    for _ in range(20_000):
        b = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            i, c = rng.randrange(len(b) + 1), alphabet[rng.randrange(len(alphabet))]
            op = rng.random()
            if op < 0.4 and b:
                b[min(i, len(b) - 1)] = c
            elif op < 0.7:
                b.insert(i, c)
            elif b:
                del b[min(i, len(b) - 1)]
        value = bytes(b)
        try:
            orjson.loads(value)
            valid = True
        except orjson.JSONDecodeError:
            valid = False
        assert plain_json([value]) is valid, value
        accepted, rejected = accepted + valid, rejected + (not valid)
    assert accepted > 1000 and rejected > 1000  # both sides were exercised
    assert plain_json([*base, None]) and not plain_json([*base, b'"\xed\xa0\x80"'])
    assert not plain_json([b'{"__type__": "datetime", "__value__": "2020-01-01T00:00:00"}'])
