"""The benchmarks still run (at a small size) and print the ratios the issues ask for. The
figures themselves come from full-size runs, reported in the closing notes, not from here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def run_bench(*argv: str) -> str:
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_sql_benchmark_runs_and_prints_its_ratios() -> None:
    text = run_bench("benchmarks/bench_sql.py", "--rows", "3000", "--repeats", "1")
    for line in ("celery cleanup", "celery-archive run", "seed-style archive", "ratio run / cleanup", "peak RSS of run"):
        assert line in text


def test_redis_benchmark_runs_and_prints_its_ratios() -> None:
    text = run_bench("benchmarks/bench_redis.py", "--results", "3000", "--repeats", "1")
    for line in ("celery-archive run", "seed-style", "ratio seed-style / run", "run throughput", "peak RSS of run"):
        assert line in text


def test_redis_memory_benchmark_runs_and_prints_its_ratio() -> None:
    text = run_bench("benchmarks/bench_redis.py", "--memory", "2000", "6000", "--repeats", "1")
    for line in ("peak RSS of `celery-archive run` by number of expired results", "2,000 results", "6,000 results",
                 "ratio peak RSS 6,000 / 2,000"):
        assert line in text


def test_restore_cli_benchmark_runs_and_prints_its_ratios(tmp_path: Path) -> None:
    text = run_bench("benchmarks/bench_restore.py", "--cli-only", "--results", "3000", "--cli-lookups", "3", "--home", str(tmp_path))
    for line in ("python -c pass", "python -c 'import pyarrow.parquet'", "celery-archive restore ID", "ratio CLI restore / python -c pass",
                 "target: CLI restore p50 <= 120 ms"):
        assert line in text


def test_restore_benchmark_runs_and_prints_its_figures() -> None:
    text = run_bench("benchmarks/bench_restore.py", "--results", "3000", "--runs", "3", "--lookups", "20", "--cli-lookups", "2", "--scans", "1",
                     "--s3-lookups", "5")
    for line in ("Python API, local sink, after compaction", "object reads per id max 3", "CLI (a fresh process each",
                 "baseline, pyarrow dataset scan", "ratio scan / index lookup", "Python API, S3 emulator (moto server)"):
        assert line in text


def test_s3_benchmark_runs_and_prints_its_ratios() -> None:
    text = run_bench("benchmarks/bench_s3.py", "--rows", "3000", "--repeats", "1", "--big-mib", "70")
    for line in ("moto server (own process)", "raw upload_file", "archive S3Sink.put", "archive upload rate / raw boto3 rate",
                 "one 70 MiB data file (multipart)", "what S3 adds to a whole run"):
        assert line in text


def test_web_benchmark_runs_and_prints_its_figures(tmp_path: Path) -> None:
    text = run_bench("benchmarks/bench_web.py", "--results", "3000", "--lookups", "30", "--cli-lookups", "2", "--home", str(tmp_path))
    for line in ("result page, first view of each id: 30 random ids, server time p50", "Python API find(), no cache",
                 "`celery-archive restore ID` as a fresh process", "ratio page server time / find()", "target: result page p50"):
        assert line in text


def test_backend_benchmark_runs_and_prints_its_ratios() -> None:
    text = run_bench("benchmarks/bench_backend.py", "--results", "3000", "--lookups", "50", "--warmup", "20", "--live", "100",
                     "--s3-lookups", "20")
    for line in ("live read, plain backend", "ratio archive+ / plain, live read", "archived read, local sink: first lookup",
                 "no row-group cache", "unknown id: object reads per lookup max", "archived read, S3 emulator (moto server)"):
        assert line in text


@pytest.mark.parametrize("backend", ["mysql", "sqlite", "django"])
def test_sql_benchmark_runs_on_each_backend_against_its_cleanup(backend: str) -> None:
    text = run_bench("benchmarks/bench_sql.py", "--backend", backend, "--rows", "2000", "--repeats", "1")
    cleanup = "TaskResult.objects.delete_expired()" if backend == "django" else "celery cleanup"
    for line in (f"2,000 expired rows ({backend})", cleanup, "celery-archive run", "ratio run / cleanup      = ", "target <= 2x"):
        assert line in text


def test_sql_growth_benchmark_runs_and_prints_its_ratio() -> None:
    text = run_bench("benchmarks/bench_sql.py", "--growth", "2000", "6000", "--repeats", "1")
    for line in ("per-result time of whole processes by number of expired rows (postgresql)",
                 "ratio per-result time 6,000 / 2,000, celery-archive run = ", "ratio per-result time 6,000 / 2,000, celery cleanup = "):
        assert line in text


def test_redis_growth_benchmark_runs_and_prints_its_ratio() -> None:
    text = run_bench("benchmarks/bench_redis.py", "--growth", "2000", "6000", "--repeats", "1")
    assert "ratio per-result time 6,000 / 2,000 = " in text


def test_scale_benchmark_runs_and_prints_its_speedups() -> None:
    text = run_bench("benchmarks/bench_scale.py", "--rows", "4000")
    for line in ("1 shard", "2 local shards", "4 local shards", "4 shards, 1 worker (-c 4)", "speedup vs 1 shard"):
        assert line in text


def test_cluster_benchmark_runs_and_prints_its_ratio() -> None:
    text = run_bench("benchmarks/bench_cluster.py", "--results", "2000", "--repeats", "1")
    for line in ("one server", "cluster (3 primaries)", "ratio cluster / one server"):
        assert line in text


def test_encrypt_benchmark_runs_and_prints_its_ratios() -> None:
    text = run_bench("benchmarks/bench_encrypt.py", "--rows", "3000", "--repeats", "1")
    for line in ("parquet unencrypted", "parquet encrypted", "jsonl encrypted", "ratio encrypted / unencrypted (parquet)",
                 "ratio encrypted / unencrypted (jsonl)", "target <= 1.2x"):
        assert line in text
