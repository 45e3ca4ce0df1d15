"""The archive's small JSON objects, typed: outcomes (each run's one decision, committed or abandoned),
manifests (the committed run's files, as readers find them), run reports (written once a run's purge
is done). Their keys are in layout.py, the lease in pipeline/lease.py, the restore index in index/packs.py.

A run commits by creating its outcome ``committed``; a later run that finds a dead run's data
files with no outcome creates ``abandoned`` for it before it removes a single file. Both are
create-only puts of the same key, so a run that was only paused (not dead) and comes back can
never commit files that were removed: its own create fails, and it stops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import orjson

from celery_archive.archive import layout
from celery_archive.archive.layout import DATA, MANIFESTS, OUTCOMES, RUNS, manifest_key, new_run_id, outcome_key, report_key, run_id_of
from celery_archive.errors import DamagedObjectError, LeaseLostError, ObjectExistsError, ObjectNotFoundError, SinkError
from celery_archive.schemas import MANIFEST_VERSION, RECORD_VERSION
from celery_archive.sinks import Sink

__all__ = ["DATA", "MANIFESTS", "OUTCOMES", "RUNS", "manifest_key", "new_run_id", "outcome_key", "report_key", "run_id_of"]


class Format(StrEnum):
    """A data file's storage format."""

    PARQUET = "parquet"
    JSONL = "jsonl"


class State(StrEnum):
    """A run's one decision (its outcome object)."""

    COMMITTED = "committed"
    ABANDONED = "abandoned"


COMMITTED, ABANDONED = State.COMMITTED, State.ABANDONED


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _field(obj: dict[str, Any], name: str, where: str) -> Any:
    try:
        return obj[name]
    except (KeyError, TypeError) as exc:
        raise DamagedObjectError(f"{where} has no {name!r}: it is damaged or not celery-archive's") from exc


@contextlib.contextmanager
def _typed(where: str) -> Iterator[None]:
    """A field of the wrong type (``"rows": "abc"``, ``"kinds": 5``, a list for an object) is
    damage to name, like a missing one, not a traceback."""
    try:
        yield
    except (TypeError, ValueError, AttributeError) as exc:
        raise DamagedObjectError(f"{where} has a field of the wrong type ({exc}): it is damaged or not celery-archive's") from exc


@dataclass(frozen=True)
class FileEntry:
    """One committed data file, as its manifest lists it."""

    key: str
    format: Format
    compression: str | None
    rows: int
    bytes: int
    sha256: str
    ids_sha256: str
    min_date_done: str
    max_date_done: str
    kinds: dict[str, int]
    encryption_key: str | None = None  # keys/...: the object holding its wrapped data key (crypto/); None: not encrypted

    def to_json(self) -> dict[str, Any]:
        out = {**asdict(self), "format": str(self.format)}  # an unencrypted file's entry: the JSON it always was
        return {k: v for k, v in out.items() if k != "encryption_key" or v is not None}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "a manifest entry") -> FileEntry:
        f = functools.partial(_field, obj, where=where)
        try:
            fmt = Format(f("format"))
        except ValueError as exc:
            raise DamagedObjectError(f"{where}: format {obj['format']!r} is neither parquet nor jsonl") from exc
        with _typed(where):
            return cls(_text(f("key")), fmt, obj.get("compression"), int(f("rows")), int(f("bytes")), _text(f("sha256")),
                       _text(f("ids_sha256")), f("min_date_done"), f("max_date_done"), dict(f("kinds")),
                       None if obj.get("encryption_key") is None else _text(obj["encryption_key"]))


@dataclass(frozen=True)
class Totals:
    files: int
    rows: int
    bytes: int

    @classmethod
    def of(cls, entries: Sequence[FileEntry], rows: int | None = None) -> Totals:
        return cls(len(entries), sum(e.rows for e in entries) if rows is None else rows, sum(e.bytes for e in entries))


_V2_ONLY = ("chain",)


def _object(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{value!r} is not an object")
    return value


@dataclass(frozen=True)
class Manifest:
    """A committed run: where its results came from, which files hold them. ``extra`` keeps
    fields this version does not model (``rebuilt``, or a newer writer's) and ``absent`` the
    modelled ones a stored manifest lacks (a v1 one has no ``rules``), so that a manifest
    read and written again is the same JSON."""

    run_id: str
    created_at: str
    source: str
    source_tables: dict[str, str]
    cutoff: str
    older_than: str
    serializer: str
    delete: bool
    tool_version: str
    files: tuple[FileEntry, ...]
    totals: Totals
    rules: dict[str, dict[str, int]] | None = None
    chain: dict[str, Any] | None = None  # v2: {"seq": n, "previous": {"run_id", "sha256"} | null} (archive/chain.py)
    manifest_version: int = MANIFEST_VERSION
    schema_version: int = RECORD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @property
    def rebuilt(self) -> bool:
        """Written again from its data files (``manifest rebuild``): cutoff and source tables are guesses."""
        return bool(self.extra.get("rebuilt"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "manifest_version": self.manifest_version, "schema_version": self.schema_version, "run_id": self.run_id,
            "created_at": self.created_at, "source": self.source, "source_tables": self.source_tables, "cutoff": self.cutoff,
            "older_than": self.older_than, "serializer": self.serializer, "delete": self.delete, "tool_version": self.tool_version,
            "files": [e.to_json() for e in self.files], "rules": self.rules, "totals": asdict(self.totals),
        }
        for name in _V2_ONLY:  # v2 additions: written when set, so a v1 manifest stays the JSON it was
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {**{k: v for k, v in out.items() if k not in self.absent}, **self.extra}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "a manifest") -> Manifest:
        if not isinstance(obj, dict):
            raise DamagedObjectError(f"{where} is not a JSON object: it is damaged or not celery-archive's")
        f = functools.partial(_field, obj, where=where)
        if not isinstance(f("files"), list):
            raise DamagedObjectError(f"{where}: 'files' is not a list: it is damaged or not celery-archive's")
        files = tuple(FileEntry.from_json(e, f"{where}, file {i}") for i, e in enumerate(f("files")))
        totals = obj.get("totals") or {}
        known = {fl.name for fl in fields(cls)} - {"extra", "absent"}
        with _typed(where):
            return cls(
                run_id=f("run_id"), created_at=obj.get("created_at", ""), source=obj.get("source", ""),
                source_tables=dict(obj.get("source_tables") or {}), cutoff=obj.get("cutoff", ""),
                older_than=obj.get("older_than", ""), serializer=obj.get("serializer", "json"), delete=bool(obj.get("delete", True)),
                tool_version=obj.get("tool_version", ""), files=files,
                totals=Totals(int(totals.get("files", len(files))), int(totals.get("rows", sum(e.rows for e in files))),
                              int(totals.get("bytes", sum(e.bytes for e in files)))),
                rules=obj.get("rules"), chain=_object(obj.get("chain")),
                manifest_version=int(obj.get("manifest_version", 1)), schema_version=int(obj.get("schema_version", 1)),
                extra={k: v for k, v in obj.items() if k not in known or (k in _V2_ONLY and v is None)},
                absent=frozenset(known - set(obj) - set(_V2_ONLY)),
            )


@dataclass(frozen=True)
class RunRecord:
    """``runs/<id>.json``: what a committed run verified and deleted, once its purge is done."""

    run_id: str
    finished_at: str
    verified: int
    deleted: int
    skipped_changed: int
    purged: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "a run report") -> RunRecord:
        f = functools.partial(_field, obj, where=where)
        with _typed(where):
            return cls(f("run_id"), obj.get("finished_at", ""), int(obj.get("verified", 0)), int(obj.get("deleted", 0)),
                       int(obj.get("skipped_changed", 0)), bool(obj.get("purged", True)))


@dataclass(frozen=True)
class Outcome:
    """``outcomes/<id>.json``: committed (with its manifest) or abandoned (by which run)."""

    run_id: str
    state: State
    at: str
    manifest: Manifest | None = None
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_id": self.run_id, "outcome": str(self.state), "at": self.at}
        if self.manifest is not None:
            out["manifest"] = self.manifest.to_json()
        if self.by is not None:
            out["by"] = self.by
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "an outcome") -> Outcome:
        f = functools.partial(_field, obj, where=where)
        try:
            state = State(f("outcome"))
        except ValueError as exc:
            raise DamagedObjectError(f"{where}: outcome {obj['outcome']!r} is neither committed nor abandoned") from exc
        manifest = Manifest.from_json(obj["manifest"], f"{where}'s manifest") if obj.get("manifest") is not None else None
        if state is State.COMMITTED and manifest is None:
            raise DamagedObjectError(f"{where} says committed but holds no manifest: it is damaged")
        return cls(f("run_id"), state, obj.get("at", ""), manifest, obj.get("by"))


def _load(sink: Sink, key: str) -> dict[str, Any]:
    with sink.open(key) as f:
        data = f.read()
    try:
        obj: dict[str, Any] = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DamagedObjectError(f"{key} in {sink.url} is not valid JSON ({exc}); it may be corrupt") from exc
    return obj


def json_bytes(obj: dict[str, Any]) -> bytes:
    """The bytes an archive JSON object is stored as (sorted keys, indented, one final newline)."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def manifest_sha256(manifest: Manifest) -> str:
    """The sha256 of ``manifests/<run>.json`` as it is (or will be) stored: what the chain links."""
    return hashlib.sha256(json_bytes(manifest.to_json())).hexdigest()


def write_json(sink: Sink, key: str, obj: dict[str, Any]) -> None:
    sink.put_bytes(key, json_bytes(obj))


def load_manifest(sink: Sink, run_id: str, key: str | None = None) -> Manifest:
    """The run's manifest: its latest revision (``key``, when the caller listed it already)."""
    if key is None:
        revisions = manifest_revisions(sink, run_id)
        key = revisions[-1][1] if revisions else manifest_key(run_id)
    try:
        return Manifest.from_json(_load(sink, key), f"{key} in {sink.url}")
    except ObjectNotFoundError as exc:
        raise ObjectNotFoundError(f"no committed run {run_id!r} in {sink.url}: `celery-archive runs --sink {sink.url}` lists them") from exc
    except DamagedObjectError as exc:  # the run's commit record holds the manifest it committed
        raise DamagedObjectError(f"{exc}; `celery-archive manifest rebuild --sink {sink.url} --run {run_id}` writes it again "
                        "from the run's commit record") from exc


def manifest_revisions(sink: Sink, run_id: str) -> list[tuple[int, str]]:
    """(revision, key) of each stored manifest of ``run_id``, oldest first (forget and prune
    add revisions; the highest is the run's manifest)."""
    named = (layout.manifest_name(o.key) for o in sink.list(f"{MANIFESTS}{run_id}"))
    return sorted((n[1], manifest_key(run_id, n[1])) for n in named if n is not None and n[0] == run_id)


def latest_manifests(sink: Sink) -> dict[str, str]:
    """run id -> the key of its latest manifest revision, from one listing, oldest run first."""
    latest: dict[str, tuple[int, str]] = {}
    for o in sink.list(MANIFESTS):
        named = layout.manifest_name(o.key)
        if named is not None and named[1] >= latest.get(named[0], (0, ""))[0]:
            latest[named[0]] = (named[1], o.key)
    return {rid: key for rid, (_rev, key) in sorted(latest.items())}


def committed_runs(sink: Sink) -> list[str]:
    return list(latest_manifests(sink))


def committed_files(sink: Sink, run_id: str | None = None) -> Iterator[FileEntry]:
    """The data file entries of every committed run (or of ``run_id``), oldest run first."""
    if run_id:
        yield from load_manifest(sink, run_id).files
        return
    for rid, key in latest_manifests(sink).items():
        yield from load_manifest(sink, rid, key).files


def reports(sink: Sink, damaged: list[str] | None = None) -> dict[str, RunRecord]:
    """run id -> its latest report (a purge report wins over a --no-delete one). A damaged one
    raises, unless ``damaged`` is given (run, verify): it then stands for what its name says
    (``.kept.json``: not purged, so the next deleting run finishes that purge) and is named there."""
    out: dict[str, RunRecord] = {}
    listed = [o for o in sink.list(RUNS) if o.key.endswith(".json")]
    for o in sorted(listed, key=lambda o: not o.key.endswith(".kept.json")):  # .kept first: a purge report wins
        kept, rid = o.key.endswith(".kept.json"), o.key[len(RUNS):].removesuffix(".json").removesuffix(".kept")
        try:
            out[rid] = RunRecord.from_json(_load(sink, o.key), f"{o.key} in {sink.url}")
        except DamagedObjectError as exc:
            if damaged is None:
                raise
            out[rid] = RunRecord(rid, "", 0, 0, 0, purged=not kept)
            damaged.append(f"{exc}: it is only the record of run {rid}'s purge, archiving goes on without it; put back "
                           f"a copy for `celery-archive runs` (restore and verify read the run's manifest and files)")
    return out


def write_report(sink: Sink, record: RunRecord) -> None:
    write_json(sink, report_key(record.run_id, purged=record.purged), record.to_json())


def uncommitted_files(sink: Sink, committed: set[str]) -> dict[str, list[str]]:
    """run id -> its data files, for runs that have no manifest (a crash before the commit,
    a run going on now, or a manifest lost)."""
    out: dict[str, list[str]] = {}
    for obj in sink.list(DATA):
        rid = run_id_of(obj.key)
        if rid not in committed:
            out.setdefault(rid, []).append(obj.key)
    return out


def load_outcome(sink: Sink, run_id: str) -> Outcome | None:
    try:
        return Outcome.from_json(_load(sink, outcome_key(run_id)), f"{outcome_key(run_id)} in {sink.url}")
    except ObjectNotFoundError:
        return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def commit(sink: Sink, manifest: Manifest) -> None:
    """Decide that the run committed (its outcome, holding the manifest), then publish the
    manifest. Raises LeaseLostError if a later run abandoned it first. (A run commits through
    ``chain.commit``, which links the manifest and registers it between the two.)"""
    decide(sink, manifest)
    publish(sink, manifest)


def decide(sink: Sink, manifest: Manifest) -> None:
    """Create the run's outcome ``committed``, holding ``manifest``: the commit point. Raises
    LeaseLostError if a later run abandoned it first."""
    run_id = manifest.run_id
    try:
        write_json(sink, outcome_key(run_id), Outcome(run_id, COMMITTED, _now(), manifest).to_json())
    except ObjectExistsError as exc:
        outcome = load_outcome(sink, run_id)
        if outcome is None or outcome.manifest is None or outcome.manifest.to_json() != manifest.to_json():
            raise LeaseLostError(f"run {run_id} was abandoned by run {outcome and outcome.by} (it found this run dead and "
                                 "removed its files) before it could commit: nothing was deleted from the source; run again") from exc


def publish(sink: Sink, manifest: Manifest) -> None:
    """Write the manifest of a committed run (again, after a crash or a loss: the same bytes)."""
    try:
        write_json(sink, manifest_key(manifest.run_id), manifest.to_json())
    except ObjectExistsError as exc:
        if load_manifest(sink, manifest.run_id, manifest_key(manifest.run_id)).to_json() != manifest.to_json():
            raise SinkError(f"{manifest_key(manifest.run_id)} in {sink.url} differs from the run's commit record "
                            f"({outcome_key(manifest.run_id)}); it was changed by hand: `celery-archive verify` names the damage") from exc


def abandon(sink: Sink, run_id: str, by: str) -> Outcome:
    """Decide that ``run_id`` (dead before its commit) never commits; returns the outcome that
    stands, which is ``committed`` if that run got there first."""
    try:
        write_json(sink, outcome_key(run_id), Outcome(run_id, ABANDONED, _now(), by=by).to_json())
    except ObjectExistsError:
        pass
    outcome = load_outcome(sink, run_id)
    if outcome is None:
        raise SinkError(f"{outcome_key(run_id)} vanished from {sink.url} right after it was written; check the storage")
    return outcome
