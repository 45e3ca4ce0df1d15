"""The archive's layout and its small JSON objects: outcomes (each run's one decision,
committed or abandoned), manifests (the committed run's files, as readers find them), run
reports (written once a run's purge is done). The lease is in lease.py, the index in index.py.

    data/date=YYYY-MM-DD/<run_id>-<seq>.parquet   data files (Hive partitions)
    outcomes/<run_id>.json                        committed (with the manifest) or abandoned: create-only,
                                                  so exactly one of the two ever exists
    manifests/<run_id>.json                       a run counts once this exists (a copy of its outcome's manifest)
    runs/<run_id>.json                            what the run verified and deleted
    locks/lease-<version>.json                    who may change the archive now

A run commits by creating its outcome ``committed``; a later run that finds a dead run's data
files with no outcome creates ``abandoned`` for it before it removes a single file. Both are
create-only puts of the same key, so a run that was only paused (not dead) and comes back can
never commit files that were removed: its own create fails, and it stops.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson

from celery_archive.errors import LeaseLostError, ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.sinks import Sink

MANIFESTS, RUNS, DATA, OUTCOMES = "manifests/", "runs/", "data/", "outcomes/"
COMMITTED, ABANDONED = "committed", "abandoned"


def new_run_id(now: dt.datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-uuuuuu``: the suffix is the microsecond in hex, so run ids sort in the
    order the runs started even within one second ("the latest run" means the same everywhere);
    runs on one archive are serialized by its lease, and outcomes are create-only besides."""
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


def uncommitted_files(sink: Sink, committed: set[str]) -> dict[str, list[str]]:
    """run id -> its data files, for runs that have no manifest (a crash before the commit,
    a run going on now, or a manifest lost)."""
    out: dict[str, list[str]] = {}
    for obj in sink.list(DATA):
        rid = run_id_of(obj.key)
        if rid not in committed:
            out.setdefault(rid, []).append(obj.key)
    return out


def outcome_key(run_id: str) -> str:
    return f"{OUTCOMES}{run_id}.json"


def load_outcome(sink: Sink, run_id: str) -> dict[str, Any] | None:
    try:
        return _load(sink, outcome_key(run_id))
    except ObjectNotFoundError:
        return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def commit(sink: Sink, manifest: dict[str, Any]) -> None:
    """Decide that the run committed (its outcome, holding the manifest), then publish the
    manifest. Raises LeaseLostError if a later run abandoned it first."""
    run_id = manifest["run_id"]
    try:
        write_json(sink, outcome_key(run_id), {"run_id": run_id, "outcome": COMMITTED, "at": _now(), "manifest": manifest})
    except ObjectExistsError:
        outcome = load_outcome(sink, run_id) or {}
        if outcome.get("outcome") != COMMITTED or outcome.get("manifest") != manifest:
            raise LeaseLostError(f"run {run_id} was abandoned by run {outcome.get('by')} (it found this run dead and "
                                 "removed its files) before it could commit: nothing was deleted from the source; run again") from None
    publish(sink, manifest)


def publish(sink: Sink, manifest: dict[str, Any]) -> None:
    """Write the manifest of a committed run (again, after a crash or a loss: the same bytes)."""
    try:
        write_json(sink, manifest_key(manifest["run_id"]), manifest)
    except ObjectExistsError:
        if load_manifest(sink, manifest["run_id"]) != manifest:
            raise SinkError(f"{manifest_key(manifest['run_id'])} in {sink.url} differs from the run's commit record "
                            f"({outcome_key(manifest['run_id'])}); it was changed by hand: `celery-archive verify` names the damage") from None


def abandon(sink: Sink, run_id: str, by: str) -> dict[str, Any]:
    """Decide that ``run_id`` (dead before its commit) never commits; returns the outcome that
    stands, which is ``committed`` if that run got there first."""
    try:
        write_json(sink, outcome_key(run_id), {"run_id": run_id, "outcome": ABANDONED, "at": _now(), "by": by})
    except ObjectExistsError:
        pass
    outcome = load_outcome(sink, run_id)
    if outcome is None:
        raise SinkError(f"{outcome_key(run_id)} vanished from {sink.url} right after it was written; check the storage")
    return outcome
