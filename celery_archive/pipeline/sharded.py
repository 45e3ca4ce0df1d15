"""A run in shards (``--shards N``, ``--on-celery``), under the run's lease held here.

The selection is split when the run starts (backends/shard.py); every shard extracts, writes
and verifies its own files in parallel (pipeline/shards.py); once all have verified, this
process checks the lease and a commit job (a process, or the ``celery_archive.commit`` task)
commits the run under the lease's token: one manifest listing every shard's files, the commit
point as for any run (chain.commit). Then the shards verify, index and purge their
files in parallel, and the run's report is written. A shard that fails or dies means no commit
and nothing deleted: the next run abandons the files (recover.py), as for a crash of any run.
A shard dying after the commit leaves the run committed and not purged: the next run finishes
it (verify, index what no shard indexed, purge).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from celery_archive import errors
from celery_archive.archive.layout import DATA, day_of, run_id_of
from celery_archive.archive.manifest import Manifest
from celery_archive.backends import Source
from celery_archive.backends.shard import split
from celery_archive.config import RunConfig
from celery_archive.errors import ArchiveError, ConfigError
from celery_archive.pipeline.commit import manifest_of, record_commit, record_purge
from celery_archive.pipeline.lease import FencedSink, Lease
from celery_archive.pipeline.shards import ShardJob, ShardResult, config_json, entries_of


class Runner(Protocol):
    where: str

    def map(self, step: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


class LocalRunner:
    """Each job in a process of its own (``python -m celery_archive.pipeline.shards``: a fresh
    interpreter, which also works where multiprocessing cannot, as in a Celery prefork child).
    Once ``stop`` is set (the run was asked to stop) each shard process is told on its stdin:
    it takes nothing more and finishes what it took. If the run is stopped at once (a second
    signal) or fails, its processes are killed: nothing of theirs was committed then."""

    where = "local"

    def __init__(self, processes: int, stop: threading.Event | None = None) -> None:
        self.processes, self.stop = processes, stop
        self._procs: set[subprocess.Popen[bytes]] = set()

    def map(self, step: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pool = ThreadPoolExecutor(max_workers=min(self.processes, len(jobs)), thread_name_prefix="celery-archive-shard")
        try:
            return list(pool.map(lambda job: self._in_process(step, job), jobs))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(self._procs):
                proc.kill()
            raise
        finally:
            pool.shutdown(wait=True)

    def _in_process(self, step: str, job: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([sys.executable, "-m", "celery_archive.pipeline.shards", step], stdin=subprocess.PIPE,
                                    stdout=out, stderr=err)
            self._procs.add(proc)
            try:
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):  # (it died at once: its exit says why)
                    proc.stdin.write(json.dumps(job).encode() + b"\n")
                    proc.stdin.flush()
                    while self.stop is not None and proc.poll() is None:
                        if self.stop.wait(0.2):
                            proc.stdin.write(b"stop\n")
                            proc.stdin.flush()
                            break
                proc.wait()
            finally:
                self._procs.discard(proc)
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()  # type: ignore[union-attr]
            out.seek(0)
            err.seek(0)
            return _answer(step, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def _answer(step: str, returncode: int, out: str, err: str) -> dict[str, Any]:
    if returncode < 0:
        raise ArchiveError(f"a {step} process died (signal {-returncode}) before it finished: nothing of it counts; "
                           "the next run cleans up or finishes this one")
    try:
        answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ArchiveError(f"a {step} process failed (exit {returncode}): {err.strip()[-2000:]}") from None
    if "error" in answer:
        cls = getattr(errors, str(answer.get("class")), ArchiveError)
        raise (cls if isinstance(cls, type) and issubclass(cls, ArchiveError) else ArchiveError)(answer["error"])
    return answer


@dataclass(frozen=True)
class Sharded:
    manifest: Manifest
    selected: int
    stopped_by: str | None
    verified: int
    deleted: int
    skipped: int
    shards: list[dict[str, Any]]
    counts: dict[str, int]


def check(cfg: RunConfig) -> None:
    if cfg.policy is not None:
        raise ConfigError("--shards and --on-celery do not take [[rules]] or [hold] yet: run without them")


def sharded_run(sink: FencedSink, lease: Lease, source: Source, cfg: RunConfig, run_id: str, now: dt.datetime,
                cutoff: dt.datetime, runner: Runner, on_start: Callable[[str], None] | None = None) -> Sharded:
    check(cfg)
    shards = split(source, cutoff, cfg.shards)
    base = ShardJob(run_id, lease.token, shards[0], config_json(cfg), now.isoformat(), cutoff.isoformat())
    jobs = [replace(base, shard=s) for s in shards]
    lease.check()
    if on_start is not None:
        on_start(run_id)
    written = [ShardResult.from_json(r) for r in runner.map("shard", [j.to_json() for j in jobs])]
    entries = entries_of(written)
    selected = sum(r.selected for r in written)
    stopped = next((r.stopped_by for r in written if r.stopped_by), None)
    manifest = manifest_of(run_id, now, cutoff, source, cfg, entries, selected, None)
    lease.check()
    commit = {"run_id": run_id, "token": lease.token, "config": base.config, "manifest": manifest.to_json()}
    committed = runner.map("commit", [commit])[0]  # the commit point, every shard verified: a task checking the token
    manifest, sha = Manifest.from_json(committed["manifest"]), str(committed["sha256"])
    lease.check()
    record_commit(sink, manifest, sha, selected, cfg, shards=len(shards))
    _remove_strays(sink, manifest)
    purge_jobs = [replace(j, files=tuple(e["key"] for e in r.entries)).to_json() for j, r in zip(jobs, written)]
    purged = [ShardResult.from_json(r) for r in runner.map("purge", purge_jobs)]
    verified, deleted = sum(p.verified for p in purged), sum(p.deleted for p in purged)
    skipped = sum(p.skipped_changed for p in purged)
    record_purge(sink, manifest, cfg, verified, deleted, skipped)
    counts: dict[str, int] = {}
    for r in written:
        for k, n in r.counts.items():
            counts[k] = counts.get(k, 0) + n
    per = [{"shard": w.shard, "ranges": [list(x) for x in s.ranges], "selected": w.selected, "archived": w.archived,
            "files": len(w.entries), "verified": p.verified, "deleted": p.deleted, "skipped_changed": p.skipped_changed,
            "seconds": round(w.seconds + p.seconds, 3)} for s, w, p in zip(shards, written, purged)]
    return Sharded(manifest, selected, stopped, verified, deleted, skipped, per, counts)


def _remove_strays(sink: FencedSink, manifest: Manifest) -> None:
    """Files of this run its manifest does not list: those of a shard attempt whose result was
    not the one committed (a redelivered shard's first attempt)."""
    listed = {e.key for e in manifest.files}
    for day in sorted({day_of(k) for k in listed}):
        for obj in sink.list(f"{DATA}date={day}/{manifest.run_id}-"):
            if obj.key not in listed and run_id_of(obj.key) == manifest.run_id:
                sink.delete(obj.key)


class CeleryRunner:
    """Each job a task on the app's workers (celery_archive/tasks.py), on ``queue``; waits for
    all of them, then forgets their results."""

    where = "celery"

    def __init__(self, app: Any, queue: str) -> None:
        if not app.conf.result_backend:
            raise ConfigError("--on-celery hears from its shards through the app's result backend: "
                              "the app has no result_backend; set one, or run with --shards N alone (local processes)")
        self.app, self.queue = app, queue

    def map(self, step: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from celery.result import allow_join_result

        # the job holds the source URL with its password: events, Flower and worker logs show argsrepr instead
        sent = [self.app.send_task(f"celery_archive.{step}", args=[job], queue=self.queue, kwargsrepr="{}",
                                   argsrepr=f"[{step} of run {job['run_id']}, shard {i + 1} of {len(jobs)}]")
                for i, job in enumerate(jobs)]
        out: list[dict[str, Any]] = []
        try:
            with allow_join_result():  # also when the run is itself a task (setup_beat)
                for result in sent:
                    out.append(result.get(propagate=True, disable_sync_subtasks=False))
        except Exception as exc:
            raise ArchiveError(f"a {step} task on the workers of queue {self.queue!r} failed: {type(exc).__name__}: {exc}; "
                               "nothing of this run was deleted that it did not archive: the next run cleans up or finishes it") from exc
        finally:
            for result in sent:
                result.forget()
        return out
