"""The pure logic of a run, with no server: retention rules, purge planning, the restore
index's buckets and compaction (on a local sink), frames of compressed JSONL, durations and
sizes, and the registry of backends."""

from __future__ import annotations

import datetime as dt
import gzip
import zlib
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from celery_archive.archive.manifest import FileEntry, Format
from celery_archive.backends import PurgeBatch, backend_of
from celery_archive.config import format_duration, parse_duration, parse_size
from celery_archive.errors import ConfigError, SinkError
from celery_archive.formats import fetch, locate
from celery_archive.formats.entries import index_schema
from celery_archive.index import packs
from celery_archive.pipeline.purge import plan
from celery_archive.pipeline.rules import Hold, Policy, Rule, glob_mask, policy_from
from celery_archive.pipeline.verify import VerifiedFile
from celery_archive.sinks import open_sink

NOW = dt.datetime(2026, 6, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)


# -- retention rules ---------------------------------------------------------------------
def records(*rows: tuple[str, str | None, str, int, float]) -> pa.Table:
    """(task_id, name, status, stored bytes, age in days) -> the columns classify reads."""
    return pa.table({
        "task_id": [r[0] for r in rows], "name": [r[1] for r in rows], "status": [r[2] for r in rows],
        "raw_result": pa.array([b"x" * r[3] for r in rows], pa.binary()),
        "date_done": pa.array([NOW - dt.timedelta(days=r[4]) for r in rows], pa.timestamp("us")),
        "ttl_ms": pa.array([-1] * len(rows), pa.int64()),
    })


def classified(policy: Policy, table: pa.Table, **kw: Any) -> dict[str, tuple[str, str, bool]]:
    labels, actions, due = policy.classify(table, NOW, **kw)
    return {t: (lb, a, d) for t, lb, a, d in zip(table["task_id"].to_pylist(), labels.to_pylist(), actions.to_pylist(), due.to_pylist())}


def test_the_first_matching_rule_wins_and_the_rest_get_the_default() -> None:
    policy = Policy(30 * DAY, (
        Rule("failures", 90 * DAY, "archive", match="shop.*", status=("FAILURE",)),
        Rule("shop", 7 * DAY, "delete", match="shop.*"),
        Rule("big", 1 * DAY, "archive", larger_than=100),
        Rule("health", None, "keep", match="health.ping"),
    ))
    table = records(("f-young", "shop.charge", "FAILURE", 10, 40), ("f-old", "shop.charge", "FAILURE", 10, 100),
                    ("s-old", "shop.checkout", "SUCCESS", 10, 8), ("s-young", "shop.checkout", "SUCCESS", 10, 6),
                    ("big", "report.make", "SUCCESS", 101, 2), ("small", "report.make", "SUCCESS", 100, 2),
                    ("ping", "health.ping", "SUCCESS", 1, 400), ("none", None, "SUCCESS", 1, 31))
    assert classified(policy, table) == {
        "f-young": ("failures", "archive", False), "f-old": ("failures", "archive", True),
        "s-old": ("shop", "delete", True), "s-young": ("shop", "delete", False),
        "big": ("big", "archive", True), "small": ("default", "archive", False),
        "ping": ("health", "keep", True), "none": ("default", "archive", True),
    }
    assert policy.widest_age() == 1 * DAY  # a run reads what the youngest acting rule takes
    assert Policy(30 * DAY, (Rule("k", 1 * DAY, "keep"),)).widest_age() == 30 * DAY  # keep takes nothing


def test_the_hold_wins_over_every_rule() -> None:
    policy = Policy(1 * DAY, (Rule("purge", 1 * DAY, "delete"),), Hold(frozenset({"legal-1"}), ("audit.*",)))
    got = classified(policy, records(("legal-1", "shop.x", "SUCCESS", 1, 10), ("a", "audit.log", "SUCCESS", 1, 10),
                                     ("b", "shop.x", "SUCCESS", 1, 10)))
    assert got == {"legal-1": ("hold", "keep", True), "a": ("hold", "keep", True), "b": ("purge", "delete", True)}


def test_results_about_to_expire_are_due_whatever_their_age() -> None:
    table = records(("soon", "t", "SUCCESS", 1, 0), ("later", "t", "SUCCESS", 1, 0), ("never", "t", "SUCCESS", 1, 0))
    table = table.set_column(table.schema.get_field_index("ttl_ms"), "ttl_ms", pa.array([30_000, 120_000, -1], pa.int64()))
    got = classified(Policy(30 * DAY), table, expiring=dt.timedelta(minutes=1))
    assert {t: d for t, (_l, _a, d) in got.items()} == {"soon": True, "later": False, "never": False}


def test_globs_match_as_fnmatch_case_sensitive_and_never_null() -> None:
    values = pa.array(["shop.a", "Shop.b", None, "shopx", "report"])
    assert glob_mask(values, ["shop.*"]).to_pylist() == [True, False, False, False, False]
    assert glob_mask(values, ["shop?", "rep*"]).to_pylist() == [False, False, False, True, True]


@pytest.mark.parametrize("rules,hold,message", [
    ([{"match": "a", "colour": "red"}], {}, "unknown key"),
    ([{"action": "shred"}], {}, "action 'shred'"),
    ([{"name": "default"}], {}, "reserved"),
    ([{"name": "a"}, {"name": "a"}], {}, "same name"),
    ([{"older_than": "soon"}], {}, "invalid duration"),
    ([{"larger_than": "big"}], {}, "invalid size"),
    ([], {"ids": ["x"]}, "unknown key"),
])
def test_policy_errors_name_what_is_wrong(rules: list[dict[str, Any]], hold: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy_from(30 * DAY, rules, hold)


def test_policy_from_a_config_file() -> None:
    policy = policy_from(30 * DAY, [{"match": "shop.*", "status": "FAILURE", "older_than": "90d", "larger_than": "1KiB"}],
                         {"task_ids": [1, "b"], "names": ["audit.*"]})
    assert policy.rules == (Rule("rule1:shop.*", 90 * DAY, "archive", "shop.*", ("FAILURE",), 1024, None),)
    assert policy.hold == Hold(frozenset({"1", "b"}), ("audit.*",))
    assert policy.labels() == ["rule1:shop.*", "default", "hold"]


# -- purge planning ----------------------------------------------------------------------
def keys_table(kind: str, ids: list[int], day: int = 1) -> pa.Table:
    return pa.table({"kind": [kind] * len(ids), "source_id": [f"{kind}-{i:03d}" for i in ids], "status": ["SUCCESS"] * len(ids),
                     "date_done": pa.array([dt.datetime(2026, 1, day, 0, 0, i) for i in ids], pa.timestamp("us", tz="UTC"))})


def verified(tmp_path: Path, name: str, table: pa.Table) -> VerifiedFile:
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)
    entry = FileEntry(name, Format.PARQUET, None, table.num_rows, path.stat().st_size, "", "", "", "", {})
    return VerifiedFile(entry, path)


def test_plan_cuts_batches_of_one_kind_that_run_on_across_files(tmp_path: Path) -> None:
    files = [verified(tmp_path, "a", keys_table("task", [0, 1, 2, 3, 4])), verified(tmp_path, "b", keys_table("task", [5, 6])),
             verified(tmp_path, "c", keys_table("group", [0, 1, 2, 3]))]
    got = [(b.kind, b.table["source_id"].to_pylist()) for b in plan(files, 3)]
    assert got == [("task", ["task-000", "task-001", "task-002"]), ("task", ["task-003", "task-004", "task-005"]),
                   ("task", ["task-006"]), ("group", ["group-000", "group-001", "group-002"]), ("group", ["group-003"])]
    for b in plan(files, 3):
        assert b.table.column_names == ["source_id", "status", "date_done"]
        assert b.table["date_done"].type == pa.timestamp("us")  # naive UTC, as the backend stores it


def test_plan_splits_a_file_of_two_kinds(tmp_path: Path) -> None:
    mixed = pa.concat_tables([keys_table("task", [0, 1]), keys_table("group", [0])])
    assert [(b.kind, b.table.num_rows) for b in plan([verified(tmp_path, "m", mixed)], 10)] == [("task", 2), ("group", 1)]


def test_a_purge_batch_is_sorted_and_knows_its_bounds() -> None:
    t = keys_table("task", [3, 1, 2]).drop_columns(["kind"])
    batch = PurgeBatch.of("task", [t.slice(0, 1), t.slice(1)])
    assert batch.table["source_id"].to_pylist() == ["task-001", "task-002", "task-003"]
    (first_date, first_id), (last_date, last_id) = batch.bounds()
    assert (first_id, last_id) == ("task-001", "task-003") and first_date < last_date
    assert batch.keys == ["source_id", "status", "date_done"] and PurgeBatch.of("group", [t]).keys == ["source_id", "date_done"]
    assert batch.values()[0] == ("task-001", "SUCCESS", first_date)


def test_outside_counts_returned_rows_that_are_not_in_the_batch() -> None:
    t = keys_table("task", [1, 2, 3]).drop_columns(["kind"])
    batch = PurgeBatch.of("task", [t])
    same = {k: t[k] for k in batch.keys}
    assert batch.outside(same) == 0 and batch.outside({}) == 0
    changed = {"source_id": ["task-001", "task-002", "task-009"], "status": ["SUCCESS", "FAILURE", "SUCCESS"],
               "date_done": [v.as_py() for v in t["date_done"]]}
    assert batch.outside(changed) == 2  # another status, an id not read


# -- the restore index -------------------------------------------------------------------
def test_buckets_are_stable_and_spread() -> None:
    ids = [f"id-{i}" for i in range(4096)]
    assert [packs.bucket_of(t, 16) for t in ids[:3]] == [zlib.crc32(t.encode()) % 16 for t in ids[:3]]
    counts = [0] * 16
    for t in ids:
        counts[packs.bucket_of(t, 16)] += 1
    assert min(counts) > 4096 / 16 / 2 and max(counts) < 4096 / 16 * 2


def entries(run: int, ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({"task_id": ids, "kind": ["task"] * n, "key": [f"data/run-{run}.parquet"] * n, "block": [0] * n,
                     "offset": list(range(n)), "length": [1] * n, "row": list(range(n)), "footer_offset": [0] * n,
                     "footer_length": [0] * n}).cast(index_schema())


def test_compaction_merges_run_files_into_buckets_and_keeps_every_entry(tmp_path: Path) -> None:
    sink = open_sink(str(tmp_path / "archive"))
    spool = tmp_path / "spool"
    spool.mkdir()
    for run, ids in ((1, ["a", "b", "c"]), (2, ["c", "d"])):
        w = packs.DeltaWriter(sink, f"r{run}", spool)
        w.add(entries(run, ids))
        w.commit()
    before = packs.lookup(sink, ["a", "c", "zz"])
    assert set(before) == {"a", "c"} and len(before["c"]) == 2  # in both runs
    report = packs.compact(sink, spool)
    assert (report.generation, report.buckets, report.entries, report.merged_runs) == (1, 16, 5, 2)
    st = packs.state(sink)
    assert st.deltas == () and (st.generation, st.buckets) == (1, 16)
    assert [o.key for o in sink.list("index/log/")] == ["index/log/packs-000001-16.ok"]
    assert packs.lookup(sink, ["a", "c", "zz"]) == before
    for o in sink.list("index/packs/"):  # each pack holds exactly its bucket's ids
        bucket = int(o.key.rsplit("/", 1)[1].split(".")[0], 16)
        assert all(packs.bucket_of(t, 16) == bucket for t in pq.read_table(tmp_path / "archive" / o.key)["task_id"].to_pylist())
    again = packs.compact(sink, spool)  # nothing new: the same generation
    assert (again.generation, again.entries, again.merged_runs) == (1, 5, 0)
    w = packs.DeltaWriter(sink, "r3", spool)
    w.add(entries(3, ["e"]))
    w.commit()
    assert packs.compact(sink, spool).generation == 2 and set(packs.lookup(sink, ["a", "e"])) == {"a", "e"}
    assert not any(o.key.startswith("index/packs/000001/") for o in sink.list("index/packs/"))  # the old generation is gone


# -- frames of compressed JSONL ----------------------------------------------------------
LINES = [orjson.dumps({"task_id": f"t-{i}", "kind": "task", "status": "SUCCESS", "result": "x" * (i * 50)}) + b"\n" for i in range(7)]
FRAMES = [LINES[0:3], LINES[3:4], LINES[4:7]]


def compressed(compression: str) -> bytes:
    if compression == "zstd":
        return b"".join(zstandard.ZstdCompressor().compress(b"".join(f)) for f in FRAMES)
    return b"".join(gzip.compress(b"".join(f)) for f in FRAMES)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_each_line_is_located_in_its_frame(tmp_path: Path, compression: str) -> None:
    data = compressed(compression)
    key = "data/f.jsonl." + {"zstd": "zst", "gzip": "gz"}[compression]  # the ending says the compression
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    table = locate(path, key, "jsonl", compression)
    assert table["task_id"].to_pylist() == [f"t-{i}" for i in range(7)]
    assert table["row"].to_pylist() == [0, 1, 2, 0, 0, 1, 2]
    spans = sorted(set(zip(table["offset"].to_pylist(), table["length"].to_pylist())))
    assert len(spans) == 3 and spans[0][0] == 0 and sum(n for _o, n in spans) == len(data)
    decomp = (lambda b: zstandard.ZstdDecompressor().decompress(b)) if compression == "zstd" else gzip.decompress
    assert [decomp(data[o:o + n]) for o, n in spans] == [b"".join(f) for f in FRAMES]  # each span is one whole frame
    sink = open_sink(str(tmp_path / "archive"))
    sink.put(key, path)
    wanted = [e for e in table.to_pylist() if e["task_id"] in ("t-1", "t-3", "t-6")]
    got = fetch(sink, key, wanted).to_pylist()
    assert [(r["task_id"], r["result"]) for r in got] == [("t-1", "x" * 50), ("t-3", "x" * 150), ("t-6", "x" * 300)]


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_truncated_frame_is_an_error(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "f.jsonl"
    data = compressed(compression)
    path.write_bytes(data[:-5])
    with pytest.raises(SinkError, match="truncated"):
        locate(path, "data/f.jsonl", "jsonl", compression)


def test_plain_jsonl_lines_are_their_own_blocks(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(LINES[:3]) + b"\n")  # a blank line at the end is no record
    table = locate(path, "data/f.jsonl", "jsonl", None)
    assert table["offset"].to_pylist() == [0, len(LINES[0]), len(LINES[0]) + len(LINES[1])]
    assert table["length"].to_pylist() == [len(x) for x in LINES[:3]]


# -- durations, sizes, the backend registry ------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), (" 12h ", 43200), ("90m", 5400), ("45s", 45), ("2w", 1209600),
                                          ("1.5h", 5400), ("7y", 7 * 365 * 86400), ("0s", 0)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["30", "d", "30 days", "-1d", "1e3s", ""])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=f"--older-than: invalid duration {text!r}"):
        parse_duration(text, "--older-than")


def test_durations_reach_back_at_most_a_thousand_years() -> None:
    assert parse_duration("1000y") == dt.timedelta(days=365000)
    with pytest.raises(ConfigError, match="too long"):
        parse_duration("1001y")


def test_durations_format_back_in_the_largest_whole_unit() -> None:
    assert [format_duration(parse_duration(t)) for t in ("2w", "14d", "36h", "90m", "45s", "0s")] == ["2w", "2w", "36h", "90m", "45s", "0s"]


@pytest.mark.parametrize("text,n", [("128MiB", 128 * 1024**2), ("64m", 64 * 1024**2), ("500kb", 500_000), ("1048576", 1048576),
                                    ("1GB", 10**9), ("2 gib", 2 * 1024**3), ("1.5k", 1536)])
def test_sizes(text: str, n: int) -> None:
    assert parse_size(text) == n


def test_a_bad_size_says_how_to_write_one() -> None:
    with pytest.raises(ConfigError, match="invalid size '12 parsecs'"):
        parse_size("12 parsecs")


@pytest.mark.parametrize("url,name", [
    ("redis://h:6379/0", "redis"), ("rediss://h/0", "redis"), ("redis+socket:///tmp/r.sock", "redis"),
    ("sentinel://h:26379/0", "redis"), ("django+postgresql://u@h/db", "django"), ("django+sqlite:///x.db", "django"),
    ("db+postgresql+psycopg://u@h/db", "sql"), ("db+sqlite:///x.db", "sql"), ("mysql+pymysql://h/db", "sql"),
])
def test_backend_of_a_url(url: str, name: str) -> None:
    assert backend_of(url) == name
    import importlib

    module = importlib.import_module(f"celery_archive.backends.{name}.source")  # each name is a package with both parts
    assert callable(module.from_config) and callable(importlib.import_module(f"celery_archive.backends.{name}.target").from_config)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_entries_are_located_in_bounded_tables(tmp_path: Path, compression: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's index entries come in tables of about LOCATE_ROWS (whole frames), not all at
    once: verification holds a batch of them, not a 128 MiB file's."""
    import celery_archive.formats as formats

    monkeypatch.setattr(formats, "LOCATE_ROWS", 2)
    path = tmp_path / "f.jsonl"
    path.write_bytes(compressed("zstd") if compression else b"".join(LINES))
    tables = list(formats.locate_batches(path, "data/f.jsonl", "jsonl", compression))
    sizes = [t.num_rows for t in tables]
    assert sum(sizes) == 7 and len(sizes) > 1
    if compression:  # frames of 3, 1 and 3 lines stay whole: a table ends after the frame that reaches 2
        assert sizes == [3, 4]
    else:
        assert sizes == [2, 2, 2, 1]
    assert [r for t in tables for r in t.to_pylist()] == locate(path, "data/f.jsonl", "jsonl", compression).to_pylist()


def test_stored_dates_as_text_are_what_arrow_writes() -> None:
    """sql/dates.as_text: a UTC timestamp column's text, made the fast way, is Arrow's own cast."""
    from celery_archive.backends.sql.dates import as_text

    utc = dt.timezone.utc
    values = [dt.datetime(2026, 10, 1, tzinfo=utc) + dt.timedelta(seconds=i * 7.3, microseconds=i) for i in range(500)]
    values += [None, dt.datetime(1, 1, 1, tzinfo=utc), dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=utc)]
    for tz in ("UTC", "+00:00", "America/New_York", None):
        for unit in ("s", "ms", "us", "ns"):
            stored = pa.array(values, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz=tz), safe=False)
            assert as_text(stored).equals(stored.cast(pa.string())), (tz, unit)
    assert as_text(pa.array(values, pa.timestamp("us", tz="UTC")))[0].as_py() == "2026-10-01 00:00:00.000000Z"


def test_django_dates_written_in_arrow_are_isoformat() -> None:
    """django/source.iso_texts: the text each naive UTC datetime's isoformat() + "+00:00" gives."""
    from celery_archive.backends.django.source import iso_texts

    values = [dt.datetime(2026, 10, 1) + dt.timedelta(seconds=i * 7.3, microseconds=i % 3) for i in range(500)]
    values += [None, dt.datetime(1, 1, 1), dt.datetime(999, 2, 3, 4, 5, 6, 7), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)]
    want = [None if v is None else v.isoformat() + "+00:00" for v in values]
    assert iso_texts(pa.array(values, pa.timestamp("us"))).to_pylist() == want
    assert iso_texts(pa.chunked_array([pa.array(values[:3], pa.timestamp("us")), pa.array(values[3:], pa.timestamp("us"))])).to_pylist() == want


def test_json_objects_made_in_arrow_are_what_orjson_writes() -> None:
    """json_objects.objects: byte for byte orjson.dumps(dict(zip(names, row))) of each row (the
    verbatim copy of a django-celery-results row), for texts holding every character JSON
    escapes, others beyond ASCII, integers and nulls."""
    import random

    import orjson

    from celery_archive.backends.json_objects import objects

    rnd = random.Random(20)
    alphabet = [chr(c) for c in range(0x30)] + list('az"\\/é€😀\u2028\x7f\u0085')

    def text(i: int) -> str | None:
        if i % 5 == 0:
            return None
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 20)))

    rows = [(text(i), f"plain-{i}", "Traceback (most recent call last):\n\t\"x\"\r\n" if i % 3 else None,
             rnd.choice([None, 0, -7, 2**62]), None) for i in range(3000)]
    names = ["task_id", "status", 'we"ird\n', "n", "none"]
    columns = [pa.array([r[j] for r in rows]) for j in range(len(names))]
    assert objects(names, columns).to_pylist() == [orjson.dumps(dict(zip(names, r))) for r in rows]
    plain = [pa.array(["a", "b"]), pa.array([None, "x\ty"])]  # no escape in one column, one short escape in another
    assert objects(["a", "b"], plain).to_pylist() == [b'{"a":"a","b":null}', b'{"a":"b","b":"x\\ty"}']
    sliced = pa.array(['x"', "y", None, "\\"])[1:3]  # its buffer holds bytes of rows it does not
    assert objects(["s"], [sliced]).to_pylist() == [b'{"s":"y"}', b'{"s":null}']
    assert objects(["z"], [pa.nulls(2)]).to_pylist() == [b'{"z":null}'] * 2
    with pytest.raises(TypeError):
        objects(["d"], [pa.array([1.5])])


def test_django_children_are_read_from_each_meta() -> None:
    """django/source._children: the children a task's meta names, each distinct meta decoded once."""
    from celery_archive.backends.django.source import _children

    metas = [b'{"children": [["c-1", null]]}', b'{"children": []}', None, b"not json", b'{"other": 1}',
             b'{"children": [["c-1", null]]}', b'{"children": null}']
    want = ['[["c-1", null]]', "[]", None, None, None, '[["c-1", null]]', None]
    assert _children(pa.array(metas, pa.binary()), len(metas)).to_pylist() == want
    assert _children(metas, len(metas)).to_pylist() == want  # as a list (a decoded column)
    assert _children(None, 3).to_pylist() == [None] * 3
