"""A decompression bomb (issue 14, item 6): a small result_compression payload that inflates
far beyond any real result. In Redis, Celery 5.7's own backend writes and compresses it (its
encoder hands over a payload of zero bytes, which its result_compression then gzips: 512 MiB
-> 0.5 MiB). Celery's database backend stores nothing compressed, so there the bomb is a
hostile row beside Celery's. A run is a real process whose peak RSS is measured: the payload
is not inflated past the bound, its stored bytes are archived as they are (with a
decode_error), and every other result goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from conftest import age_rows, celery_app, cli
from helpers import read_archive
from test_redis_source import REDIS_URL, keys, prefix, redis_app  # noqa: F401 - prefix is a fixture

from celery_archive.backends.codec import MAX_INFLATED

BOMB = 512 * 1024**2  # inflated size: 8 times the bound
MIB = 1024**2


def arm(app: Any) -> None:
    """The app's backend encodes a result "BOMB" (in Redis: the meta holding it) as BOMB zero
    bytes; Celery's own encode() then compresses them with its result_compression."""
    backend = app.backend
    encode = backend._encode

    def bombed(data: Any) -> Any:
        if data == "BOMB" or (isinstance(data, dict) and data.get("result") == "BOMB"):
            return "application/json", "utf-8", b"\0" * BOMB
        return encode(data)

    backend._encode = bombed


def gzip_bomb() -> bytes:
    """What Celery 5.7's result_compression="gzip" makes of BOMB zero bytes, made a MiB at a time."""
    from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC

    z = zlib.compressobj()
    body = b"".join([z.compress(bytes(MIB)) for _ in range(BOMB // MIB)] + [z.flush()])
    return COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip\0" + body


# The console script's own entry point, reporting its peak RSS (VmHWM) at exit. getrusage
# would not do: a child's ru_maxrss starts at its parent's high-water mark when it is forked.
_MEASURED = """
import atexit, os, sys

def _peak():
    with open("/proc/self/status") as f, open(os.environ["CA_PEAK_FILE"], "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM")).split()[1])

atexit.register(_peak)
sys.argv = ["celery-archive", *sys.argv[1:]]
from celery_archive.cli import entry
entry()
"""


def run_measured(*args: str) -> tuple[dict[str, Any], float]:
    """(the --json report, peak RSS in MiB) of one `celery-archive run` process."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        proc = subprocess.run([sys.executable, "-c", _MEASURED, "run", *args, "--json"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "CA_PEAK_FILE": str(peak)})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), int(peak.read_text()) / 1024


def test_a_bomb_in_a_sql_backend_is_archived_as_stored_in_bounded_memory(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(20):
        app.backend.store_result(f"ok-{i}", {"n": i, "text": "x" * 500}, "SUCCESS")
    app.backend.store_result("bomb-0", "to be replaced", "SUCCESS")
    stored = gzip_bomb()
    engine = sa.create_engine(sqlite_url.removeprefix("db+"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE celery_taskmeta SET result = :r WHERE task_id = 'bomb-0'"), {"r": stored})
    engine.dispose()
    assert len(stored) < 2 * MIB
    age_rows(sqlite_url, 40)

    report, rss = run_measured("--source", sqlite_url, "--sink", str(tmp_path / "archive"), "--older-than", "30d")
    assert report["archived"] == report["deleted"] == 21
    assert rss < 350, f"peak RSS {rss:.0f} MiB: the bomb was inflated"  # a run without it: ~100 MiB
    records = read_archive(tmp_path / "archive")
    bomb = records["bomb-0"]
    assert bomb["raw_result"] == stored and bomb["result"] is None and bomb["compression"] == "application/x-gzip"
    assert bomb["decode_error"] == (f"result: not decompressed: it inflates to more than {MAX_INFLATED // MIB} MiB "
                                    "(application/x-gzip); the stored bytes are kept")
    assert json.loads(records["ok-7"]["result"]) == {"n": 7, "text": "x" * 500}


def test_a_bomb_in_redis_is_archived_as_stored_in_bounded_memory(prefix: str, tmp_path: Path) -> None:  # noqa: F811
    """In Redis the whole meta is compressed: its status and date_done cannot be read without
    inflating it. It is archived as stored, status null, dated from its TTL (as a value with
    no date_done is), with a decode_error; restore puts the very bytes back."""
    app = redis_app(prefix, result_compression="gzip")
    arm(app)
    app.backend.store_result("ok-0", {"n": 0}, "SUCCESS")
    app.backend.store_result("bomb-0", "BOMB", "SUCCESS")  # the whole value becomes the bomb
    bomb_key = f"{prefix}celery-task-meta-bomb-0"
    stored = keys(prefix)[bomb_key]
    assert stored.startswith(b"\x00celery-compressed\x00application/x-gzip\x00") and len(stored) < 2 * MIB
    time.sleep(2.1)
    sink = tmp_path / "archive"

    report, rss = run_measured("--source", REDIS_URL, "--key-prefix", prefix, "--sink", str(sink), "--older-than", "1s")
    assert rss < 350, f"peak RSS {rss:.0f} MiB: the bomb was inflated"  # a run without it: ~100 MiB
    assert report["deleted"] == 2 and report["source_counts"]["not_inflated"] == 1
    records = read_archive(sink)
    bomb = records["bomb-0"]
    assert bomb["raw_value"] == stored and bomb["result"] is None and bomb["status"] is None
    assert bomb["compression"] == "application/x-gzip" and bomb["raw_key"] == bomb_key.encode()
    assert bomb["decode_error"] == (f"value: not decompressed: it inflates to more than {MAX_INFLATED // MIB} MiB "
                                    "(application/x-gzip); the stored bytes are kept; status unknown, dated from its TTL")
    assert json.loads(records["ok-0"]["result"]) == {"n": 0}
    client = redis.Redis.from_url(REDIS_URL)
    assert client.get(bomb_key) is None
    put = cli("restore", "bomb-0", "--sink", str(sink), "--into", REDIS_URL, "--json")
    assert put.returncode == 0 and json.loads(put.stdout)["restored"] == 1, put.stderr
    assert client.get(bomb_key) == stored
    client.close()


@pytest.mark.parametrize("method", ["gzip", "bzip2", "lzma", "zstd"])
def test_every_celery_compression_is_bounded(method: str) -> None:
    """Payloads made by Celery 5.7's own compress_payload (zstd, which kombu registers only with
    its own zstd module, in Celery's format by zstandard): inflated within the bound, refused past it."""
    import zstandard
    from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC, compress_payload

    from celery_archive.backends.codec import TooLarge, decompress

    plain = b'{"rows": [' + b"1, " * (700 * 1024) + b"1]}"  # ~2 MiB
    if method == "zstd":
        payload = COMPRESSED_PAYLOAD_MAGIC + b"application/zstd\0" + zstandard.ZstdCompressor().compress(plain)
    else:
        payload = compress_payload(plain, method)
    ctype, inflated = decompress(payload, limit=len(plain))
    assert inflated == plain and ctype.startswith("application/")
    with pytest.raises(TooLarge, match="inflates to more than 1 MiB"):
        decompress(payload, limit=MIB)
    with pytest.raises(ValueError, match="truncated"):
        decompress(payload[: len(payload) // 2], limit=len(plain))
