"""What both benchmarks share: running a contender as its own process and measuring it."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time


def measure(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, stdout) of one child process; exits if it fails."""
    out = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    out.seek(0)
    text = out.read().decode()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{argv[0]} failed:\n{err}\n{text}")
    return seconds, usage.ru_maxrss / 1024, text


def write_samples(app: object, n: int = 100) -> list[str]:
    """``n`` results written by the app's own Celery backend (result_extended): successes and,
    every tenth, a failure with its exception. Returns their task ids."""
    from celery.app.task import Context

    backend = app.backend  # type: ignore[attr-defined]
    ids = []
    for i in range(n):
        tid = f"sample-{i:03d}"
        req = Context(id=tid, task=f"proj.tasks.t{i % 7}", args=[i, "x"], kwargs={"k": i}, hostname="w1@h", retries=0,
                      delivery_info={"routing_key": "celery"})
        if i % 10 == 3:
            try:
                raise ValueError("boom", i)
            except ValueError as exc:
                backend.mark_as_failure(tid, exc, traceback="Traceback (most recent call last): ...", request=req)
        else:
            backend.store_result(tid, {"order": i, "items": [1, 2, 3], "note": "ok " * 20}, "SUCCESS", request=req)
        ids.append(tid)
    return ids


def rotated(labels: list[str], round_no: int) -> list[str]:
    """The contenders in another order each round, so that none always runs first (after the
    data is made, when the server may still be busy with it) or always right after another."""
    k = round_no % len(labels)
    return labels[k:] + labels[:k]
