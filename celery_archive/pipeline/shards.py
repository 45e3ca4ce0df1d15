"""A shard's work, wherever it runs (a local process for ``--shards N``, a Celery worker for
``--on-celery``): before the commit, extract its part of the selection, write and verify its
files (:func:`write_shard`); the run's one commit (:func:`commit_shards`); after it, verify them again, add their restore index
entries and purge them (:func:`purge_shard`). Jobs and results are JSON.

A shard holds no lease of its own: it acts under the run's. Before every put, delete and
purge batch it reads the lease (:class:`LeaseWatch`): the token must be the run's, and the
lease must have been renewed (a new version seen) within half its ttl by the shard's own
clock; before the commit it also stops once the run has an outcome (committed or abandoned).
A shard of a run that lost its lease so writes and deletes nothing more.

A shard's files are numbered from a base of its own, with a random attempt number in it, so
that a redelivered shard (a worker lost) never writes over a file of an earlier attempt; the
run commits the files of the attempt whose result it got and removes the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_archive.archive import manifest as mf
from celery_archive.archive.manifest import FileEntry, Totals
from celery_archive.backends import open_source
from celery_archive.backends.shard import Shard, restrict
from celery_archive.config import RunConfig
from celery_archive.errors import LeaseLostError, VerifyError
from celery_archive.pipeline.lease import FencedSink, Lease
from celery_archive.sinks import Sink, open_sink
from celery_archive.spool import spool_dir

_FILES_PER_ATTEMPT = 100_000
STOP = threading.Event()  # set by SIGTERM/SIGINT in a shard's process (main): its shard takes nothing more
_DURATIONS = ("older_than", "expiring_within", "result_expires", "max_runtime")
_PATHS = ("spool_dir", "metrics_file")


def first_seq(shard: int, attempt: int) -> int:
    """Where a shard attempt's file numbers start (each attempt's range is its own)."""
    return ((shard + 1) * 10_000 + attempt) * _FILES_PER_ATTEMPT


def config_json(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as JSON (a shard's run takes no [[rules]]: pipeline/sharded.py refuses them)."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "policy"}
    for name in _DURATIONS:
        out[name] = None if out[name] is None else out[name].total_seconds()
    for name in _PATHS:
        out[name] = None if out[name] is None else str(out[name])
    return out


def config_of(obj: dict[str, Any]) -> RunConfig:
    v = dict(obj)
    for name in _DURATIONS:
        v[name] = None if v.get(name) is None else dt.timedelta(seconds=v[name])
    for name in _PATHS:
        v[name] = None if v.get(name) is None else Path(v[name])
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: val for k, val in v.items() if k in known})


@dataclass(frozen=True)
class ShardJob:
    run_id: str
    token: str  # the run's lease token
    shard: Shard
    config: dict[str, Any]
    now: str  # the run's clock and cutoff (naive UTC, ISO)
    cutoff: str
    files: tuple[str, ...] = ()  # purge: the shard's committed files

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shard": self.shard.to_json(), "files": list(self.files)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardJob:
        return cls(obj["run_id"], obj["token"], Shard.from_json(obj["shard"]), dict(obj["config"]), obj["now"],
                   obj["cutoff"], tuple(obj.get("files", ())))


@dataclass
class ShardResult:
    shard: int
    entries: list[dict[str, Any]] = field(default_factory=list)
    selected: int = 0
    archived: int = 0
    verified: int = 0
    deleted: int = 0
    skipped_changed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    stopped_by: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardResult:
        return cls(**obj)


class LeaseWatch:
    """The fence of a shard: the run's lease, read from the archive (see the module's docstring)."""

    def __init__(self, sink: Sink, run_id: str, token: str, ttl: float, before_commit: bool) -> None:
        self.reader = Lease(sink, run_id, ttl)  # only read, never taken
        self.sink, self.run_id, self.token, self.ttl, self.before_commit = sink, run_id, token, ttl, before_commit
        self._seen: int | None = None
        self._since = time.monotonic()

    def check(self) -> None:
        cur = self.reader.latest()
        where = f"the lease on {self.sink.url}"
        if cur is None or cur.free or cur.body.get("token") != self.token:
            raise LeaseLostError(f"run {self.run_id} no longer holds {where} (taken over, released or removed): "
                                 "its shard stopped before changing anything more")
        now = time.monotonic()
        if cur.number != self._seen:
            self._seen, self._since = cur.number, now
        elif now - self._since >= self.ttl / 2:
            raise LeaseLostError(f"run {self.run_id} has not renewed {where} for {now - self._since:.0f} s: "
                                 "its shard stopped before changing anything more")
        if self.before_commit and mf.load_outcome(self.sink, self.run_id) is not None:
            raise LeaseLostError(f"run {self.run_id} was committed or abandoned without this shard attempt: it stops")


def _times(job: ShardJob) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime.fromisoformat(job.now), dt.datetime.fromisoformat(job.cutoff)


def write_shard(job_json: dict[str, Any]) -> dict[str, Any]:
    """Extract, write and verify one shard's files; its ShardResult as JSON. Raises (nothing
    is committed then) on any failure."""
    from celery_archive.formats.writer import ArchiveWriter
    from celery_archive.pipeline.commit import manifest_of
    from celery_archive.pipeline.extract import StopEarly, batches
    from celery_archive.pipeline.verify import Verifier

    job = ShardJob.from_json(job_json)
    cfg, (now, cutoff) = config_of(job.config), _times(job)
    started = time.perf_counter()
    archive = open_sink(cfg.sink)
    watch = LeaseWatch(archive, job.run_id, job.token, cfg.lease_ttl, before_commit=True)
    watch.check()
    sink = FencedSink(archive, watch)
    source = open_source(cfg)
    out = ShardResult(job.shard.index)
    try:
        restrict(source, job.shard)
        with spool_dir(cfg.spool_dir or archive.spool_root()) as tmp:
            verifier = Verifier(sink, job.run_id, Path(tmp))
            writer = ArchiveWriter(sink, job.run_id, cfg.format, cfg.compression, cfg.max_file_bytes, Path(tmp),
                                   on_put=verifier.submit, first_seq=first_seq(job.shard.index, secrets.randbelow(10_000)))
            try:
                try:
                    for cols in batches(source, cfg, cutoff, job.run_id, now, None, None, started, STOP):
                        out.selected += cols.num_rows
                        writer.write(cols)
                except StopEarly as why:
                    out.stopped_by = str(why.args[0])
                entries = writer.close()
                report = verifier.report(manifest_of(job.run_id, now, cutoff, source, cfg, entries, out.selected, None))
            except BaseException:
                writer.abort()
                verifier.abandon()
                raise
            if not report.ok:
                raise VerifyError(f"shard {job.shard.name} of run {job.run_id} failed verification, nothing was committed: "
                                  + "; ".join(report.problems[:5]))
        out.entries = [e.to_json() for e in entries]
        out.archived = out.verified = sum(e.rows for e in entries)
        out.counts, out.examples = dict(source.counts), dict(source.examples)
    finally:
        source.close()
    out.seconds = round(time.perf_counter() - started, 3)
    return out.to_json()


def purge_shard(job_json: dict[str, Any]) -> dict[str, Any]:
    """After the run's commit: verify the shard's files again, add their restore index entries
    (the shard's own log file) and, unless --no-delete, purge them from the source (only the
    shard's id ranges). Safe to run again: what is gone counts as skipped."""
    from celery_archive.pipeline.commit import finish

    job = ShardJob.from_json(job_json)
    cfg = config_of(job.config)
    started = time.perf_counter()
    archive = open_sink(cfg.sink)
    watch = LeaseWatch(archive, job.run_id, job.token, cfg.lease_ttl, before_commit=False)
    watch.check()
    sink = FencedSink(archive, watch)
    manifest = mf.load_manifest(archive, job.run_id)
    keys = set(job.files)
    part = tuple(e for e in manifest.files if e.key in keys)
    mine = dataclasses.replace(manifest, files=part, totals=Totals.of(part))
    source = open_source(cfg)
    try:
        restrict(source, job.shard)
        with spool_dir(cfg.spool_dir or archive.spool_root()) as tmp:
            verified, deleted, skipped = finish(sink, source, mine, Path(tmp), cfg, fence=watch.check,
                                                part=f"s{job.shard.index:04d}")
    finally:
        source.close()
    return ShardResult(job.shard.index, verified=verified, deleted=deleted, skipped_changed=skipped,
                       seconds=round(time.perf_counter() - started, 3)).to_json()


def commit_shards(job: dict[str, Any]) -> dict[str, Any]:
    """The run's one commit, once every shard verified (``job``: run_id, token, config and the
    manifest of all the shards' files): under the run's lease, checked before every put, as a
    shard's work is. Run again (a redelivered commit task), it finds the run's own commit and
    finishes its registration and publication instead of committing twice; an abandoned run
    (its lease taken over) is not committed. {"manifest", "sha256"} of the committed manifest."""
    from celery_archive.archive import chain

    cfg = config_of(job["config"])
    archive = open_sink(cfg.sink)
    watch = LeaseWatch(archive, job["run_id"], job["token"], cfg.lease_ttl, before_commit=False)
    watch.check()
    sink = FencedSink(archive, watch)
    done = mf.load_outcome(archive, job["run_id"])
    if done is None:
        manifest, sha = chain.commit(sink, mf.Manifest.from_json(job["manifest"]))
    elif done.manifest is None:
        raise LeaseLostError(f"run {job['run_id']} was abandoned by {done.by or 'another run'}: it is not committed")
    else:  # committed by an earlier attempt of this task
        manifest, sha = done.manifest, chain.register(sink, done.manifest)
        mf.publish(sink, manifest)
    return {"manifest": manifest.to_json(), "sha256": sha}


def entries_of(results: list[ShardResult]) -> list[FileEntry]:
    return [FileEntry.from_json(e) for r in results for e in r.entries]


def _stop_when_told() -> None:
    import sys

    sys.stdin.readline()  # "stop", or the end of stdin: the run that started this process is gone
    STOP.set()


def main() -> None:
    """``python -m celery_archive.pipeline.shards shard|commit|purge``: the job (JSON, one line)
    on stdin, its result on stdout, or {"error", "class"} (exit 1)."""
    import json
    import signal
    import sys

    from celery_archive.errors import ArchiveError

    # A stop asked for (the run writes a line to a shard's stdin, or closes it when it is gone;
    # Ctrl-C and systemd's SIGTERM reach the whole process group): a shard takes nothing more
    # and finishes what it took; a commit or a purge goes to its end. Stopping at once is the
    # run's to do (it kills its shard processes).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: STOP.set())
    job = json.loads(sys.stdin.readline())
    threading.Thread(target=_stop_when_told, daemon=True).start()
    step = {"shard": write_shard, "commit": commit_shards, "purge": purge_shard}[sys.argv[1]]
    try:
        out = step(job)
    except ArchiveError as exc:
        print(json.dumps({"error": str(exc), "class": type(exc).__name__}))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
