"""The cost of encryption: the same full `celery-archive run` (extract, write, verify, purge) on
identical copies of a PostgreSQL database of expired results, to an unencrypted archive and to
one with `encrypt=keyfile:` (a data key per file: Parquet modular encryption, JSONL frames
sealed with AES-256-GCM), measured in the same invocation, rounds rotated. Target (issue 21):
an encrypted run <= 1.2x the time of the same run unencrypted.

    .venv/bin/python benchmarks/bench_encrypt.py [--rows 200000] [--repeats 3] [--formats parquet,jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_sql import drop, make_template, url_for
from common import measure, rotated
from sqldbs import Db

BIN = Path(sys.executable).parent


PG = Db("postgresql")  # clone() and remaining() of a template that make_template() made

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", default="parquet,jsonl", help="comma-separated: parquet, jsonl (zstd)")
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    labels = [f"{fmt} {mode}" for fmt in formats for mode in ("unencrypted", "encrypted")]
    results: dict[str, list[float]] = {label: [] for label in labels}
    template = make_template(args.rows, prefix="ca_bench_enc")
    try:
        with tempfile.TemporaryDirectory() as keys:
            master = Path(keys) / "master.key"
            master.write_bytes(os.urandom(32))
            for r in range(args.repeats):
                for label in rotated(labels, r):
                    fmt, mode = label.split()
                    db = PG.clone(template)
                    try:
                        with tempfile.TemporaryDirectory() as tmp:
                            sink = f"file://{tmp}/archive" + (f"?encrypt=keyfile:{master}" if mode == "encrypted" else "")
                            extra = ["--compression", "zstd"] if fmt == "jsonl" else []
                            s, _rss, out = measure([str(BIN / "celery-archive"), "run", "--source", "db+" + url_for(db),
                                                    "--sink", sink, "--older-than", "30d", "--format", fmt, *extra, "--json"])
                            report = json.loads(out)
                            assert report["archived"] == report["verified"] == report["deleted"] == args.rows, report
                            if mode == "encrypted":
                                assert list(Path(tmp, "archive", "keys").rglob("*.json")), "no data key written"
                        assert PG.remaining(db) == 0, f"{label} left rows behind"
                        results[label].append(s)
                    finally:
                        drop(db)
    finally:
        drop(template)
    print(f"{args.rows:,} expired rows on PostgreSQL, `celery-archive run`, median of {args.repeats} "
          "(each a fresh process on a fresh copy):")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, s in med.items():
        print(f"  {k:22s} {s:6.2f} s   {args.rows / s:9,.0f} rows/s   rounds: {[round(x, 2) for x in results[k]]}")
    for fmt in formats:
        ratio = med[f"{fmt} encrypted"] / med[f"{fmt} unencrypted"]
        print(f"ratio encrypted / unencrypted ({fmt}) = {ratio:.2f}x   (target <= 1.2x)")


if __name__ == "__main__":
    main()
