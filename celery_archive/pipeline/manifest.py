"""The archive's layout and its small JSON objects: manifests (a run's commit marker,
written last and create-only), run reports (written once a run's purge is done) and the lock.

    data/date=YYYY-MM-DD/<run_id>-<seq>.parquet   data files (Hive partitions)
    manifests/<run_id>.json                       a run counts once this exists
    runs/<run_id>.json                            what the run verified and deleted
    locks/run.lock                                held while a run changes anything
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from celery_archive.errors import LockError, ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.sinks import Sink

MANIFESTS, RUNS, DATA, LOCK = "manifests/", "runs/", "data/", "locks/run.lock"


def new_run_id(now: dt.datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-uuuuuu``: the suffix is the microsecond in hex, so run ids sort in the
    order the runs started even within one second ("the latest run" means the same everywhere);
    runs on one archive are serialized by its lock, and manifests are create-only besides."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{now.microsecond:06x}"


def run_id_of(data_key: str) -> str:
    """The run that wrote a data file, from its name ``<run_id>-<seq>.<ext>``."""
    name = data_key.rsplit("/", 1)[-1]
    return name.rsplit("-", 1)[0]


def _load(sink: Sink, key: str) -> dict[str, Any]:
    with sink.open(key) as f:
        data = f.read()
    try:
        obj: dict[str, Any] = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SinkError(f"{key} in {sink.url} is not valid JSON ({exc}); it may be corrupt") from None
    return obj


def write_json(sink: Sink, key: str, obj: dict[str, Any]) -> None:
    sink.put_bytes(key, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def manifest_key(run_id: str) -> str:
    return f"{MANIFESTS}{run_id}.json"


def report_key(run_id: str, purged: bool = True) -> str:
    """``runs/<id>.json`` once purged; ``runs/<id>.kept.json`` for a --no-delete run (both write-once)."""
    return f"{RUNS}{run_id}.json" if purged else f"{RUNS}{run_id}.kept.json"


def load_manifest(sink: Sink, run_id: str) -> dict[str, Any]:
    try:
        return _load(sink, manifest_key(run_id))
    except ObjectNotFoundError:
        raise ObjectNotFoundError(f"no committed run {run_id!r} in {sink.url}: `celery-archive runs --sink {sink.url}` lists them") from None


def committed_runs(sink: Sink) -> list[str]:
    return [o.key[len(MANIFESTS):-len(".json")] for o in sink.list(MANIFESTS) if o.key.endswith(".json")]


def committed_files(sink: Sink, run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The data file entries of every committed run (or of ``run_id``), oldest run first."""
    for rid in [run_id] if run_id else sorted(committed_runs(sink)):
        yield from load_manifest(sink, rid)["files"]


def reports(sink: Sink) -> dict[str, dict[str, Any]]:
    """run id -> its latest report (a purge report wins over a --no-delete one)."""
    out: dict[str, dict[str, Any]] = {}
    for o in sink.list(RUNS):
        name = o.key[len(RUNS):]
        if name.endswith(".kept.json"):
            out.setdefault(name[: -len(".kept.json")], _load(sink, o.key))
        elif name.endswith(".json"):
            out[name[: -len(".json")]] = _load(sink, o.key)
    return out


def orphan_files(sink: Sink, committed: set[str]) -> Iterator[str]:
    """Data files of runs that never wrote a manifest (a crash before commit)."""
    for obj in sink.list(DATA):
        if run_id_of(obj.key) not in committed:
            yield obj.key


@dataclass
class Lock:
    """A create-only lock object; a lock left by a dead process on this host is taken over."""

    sink: Sink
    run_id: str
    held: bool = False

    def acquire(self) -> None:
        me = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
              "since": dt.datetime.now(dt.timezone.utc).isoformat()}
        for _attempt in range(2):
            try:
                write_json(self.sink, LOCK, me)
                self.held = True
                return
            except ObjectExistsError:
                try:
                    other = _load(self.sink, LOCK)
                except (ObjectNotFoundError, SinkError):
                    continue  # released meanwhile, or a torn lock: try again
                if other.get("host") == me["host"] and not _alive(int(other.get("pid", 0))):
                    self.sink.delete(LOCK)  # its process is gone: stale
                    continue
                raise LockError(
                    f"run {other.get('run_id')} (pid {other.get('pid')} on {other.get('host')}, since {other.get('since')}) "
                    f"holds the lock on {self.sink.url}; wait for it, or if it is dead, delete {LOCK} in the archive"
                ) from None
        raise LockError(f"could not take the lock on {self.sink.url}; try again")

    def release(self) -> None:
        if self.held:
            self.sink.delete(LOCK)
            self.held = False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
