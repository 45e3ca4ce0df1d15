"""Extract: the run's record batches from the source, the retention policy applied, throttled
to --max-rate, ended at a batch boundary by --max-runtime or a stop asked for."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.backends import Source
    from celery_archive.config import RunConfig
    from celery_archive.pipeline.rules import Applied

Progress = Callable[[int], None]  # called with the number of results taken so far


def batches(source: Source, cfg: RunConfig, cutoff: dt.datetime, run_id: str, now: dt.datetime,
             applied: Applied | None, progress: Progress | None, started: float,
             stop: threading.Event | None) -> Iterator[pa.Table]:
    """The run's record batches: the policy applied, throttled to --max-rate, ended at a batch
    boundary once --max-runtime has passed or ``stop`` is set (``StopEarly`` is then raised
    after the last one)."""
    taken = 0
    for cols in source.extract(cutoff, cfg.batch_size, run_id, now):
        if applied is not None:
            cols = applied.apply(cols)
        taken += cols.num_rows
        yield cols
        if progress is not None:
            progress(taken)
        if stop is not None and stop.is_set():
            raise StopEarly("signal")
        elapsed = time.perf_counter() - started
        if cfg.max_rate and taken / cfg.max_rate > elapsed:
            time.sleep(taken / cfg.max_rate - elapsed)
        if cfg.max_runtime and time.perf_counter() - started >= cfg.max_runtime.total_seconds():
            raise StopEarly("max_runtime")


class StopEarly(Exception):
    """--max-runtime reached, or a stop asked for, at a batch boundary (args[0]: which)."""
