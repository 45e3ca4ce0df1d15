"""Taking results out of the archive: the machinery that ``forget`` and ``prune`` share.

A rewrite is a plan, recorded before anything changes (``rewrites/<id>.json``, create-only),
then carried out in steps that each can be repeated after a crash:

1. each data file of the plan is written again without the rows that go, under a new key of
   the same run (a file that keeps nothing is dropped), and each run touched gets a new
   manifest revision naming the new files, which records the sha256 of the revision it
   supersedes. Until then readers see the old file, afterwards the new one: never both;
2. the restore index is made again without the old files' entries (nor the ids that go),
   with the new files' entries (one compaction; the old index objects are retired with it);
3. the old files are erased (every version the store keeps), and the wrapped data keys of the
   old files of an encrypted archive are destroyed (crypto-shredding: an old file that S3 Object
   Lock keeps cannot be erased, but nothing can read it any more), then the plan is removed.

A plan that is still there when the next ``forget``, ``prune`` or ``run`` takes the lease is
finished by it. The plan holds no result and no task id: the ids that go are salted hashes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from celery_archive.archive import audit, chain, layout
from celery_archive.archive import manifest as mf
from celery_archive.crypto import cipher_of, encryption_of, key_name
from celery_archive.errors import DamagedObjectError, KeyMaterialError, ObjectNotFoundError
from celery_archive.formats import locate, module, read_tables
from celery_archive.formats.entries import feed_ids
from celery_archive.schemas import MANIFEST_VERSION, conform, field_names
from celery_archive.sinks import download
from celery_archive.times import iso

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.crypto import Cipher
    from celery_archive.sinks import Sink


def hash_id(salt: str, task_id: str) -> str:
    return hashlib.sha256(f"{salt}\0{task_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Drop:
    """Which rows go: those whose task id hashes (with ``salt``) to one of ``id_hashes``
    (forget), or whose ``date_done`` is before ``before`` unless held (prune)."""

    salt: str = ""
    id_hashes: frozenset[str] = frozenset()
    before: str | None = None  # ISO 8601 UTC
    hold_ids: frozenset[str] = frozenset()
    hold_names: tuple[str, ...] = ()

    @classmethod
    def of_ids(cls, task_ids: Iterable[str]) -> Drop:
        salt = secrets.token_hex(16)
        return cls(salt, frozenset(hash_id(salt, t) for t in task_ids))

    def _before(self) -> dt.datetime | None:
        return None if self.before is None else dt.datetime.fromisoformat(self.before.replace("Z", "+00:00")).replace(tzinfo=None)

    def ids_mask(self, task_id: Any) -> pa.Array:
        """True for the ids that go (by hash alone: what the index can tell)."""
        import pyarrow as pa

        return pa.array([t is not None and hash_id(self.salt, t) in self.id_hashes for t in task_id.to_pylist()], pa.bool_())

    def mask(self, table: pa.Table) -> pa.Array:
        """True for the rows of ``table`` (task_id, name, date_done as naive UTC) that go."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from celery_archive.pipeline.rules import glob_mask

        if self.before is None:
            return self.ids_mask(table.column("task_id"))
        dd = table.column("date_done")
        old = pc.fill_null(pc.less(dd, pa.scalar(self._before(), dd.type)), False)
        held = pc.is_in(table.column("task_id"), value_set=pa.array(sorted(self.hold_ids), pa.string()))
        if self.hold_names:
            held = pc.or_(held, glob_mask(table.column("name"), list(self.hold_names)))
        return pc.and_(old, pc.invert(pc.fill_null(held, False)))

    def whole(self, entry: mf.FileEntry) -> bool:
        """The whole file goes, known from its manifest entry alone (prune, nothing held)."""
        before = self._before()
        if before is None or self.hold_ids or self.hold_names:
            return False
        return dt.datetime.fromisoformat(entry.max_date_done.replace("Z", "+00:00")).replace(tzinfo=None) < before

    def untouched(self, entry: mf.FileEntry) -> bool:
        """Nothing of the file goes, known from its manifest entry alone (prune)."""
        before = self._before()
        return before is not None and dt.datetime.fromisoformat(entry.min_date_done.replace("Z", "+00:00")).replace(tzinfo=None) >= before

    def to_json(self) -> dict[str, Any]:
        return {"salt": self.salt, "id_hashes": sorted(self.id_hashes), "before": self.before,
                "hold_ids": sorted(self.hold_ids), "hold_names": list(self.hold_names)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Drop:
        return cls(obj.get("salt", ""), frozenset(obj.get("id_hashes", [])), obj.get("before"),
                   frozenset(obj.get("hold_ids", [])), tuple(obj.get("hold_names", [])))


@dataclass(frozen=True)
class FilePlan:
    old: str
    new: str  # same run, a new sequence number; not written if nothing is kept


@dataclass(frozen=True)
class Plan:
    rewrite_id: str
    command: str  # forget | prune
    reason: str
    by: str
    at: str
    drop: Drop
    files: tuple[FilePlan, ...]
    extra: dict[str, Any] = field(default_factory=dict)  # what the command counted when it planned

    @property
    def runs(self) -> list[str]:
        return sorted({layout.run_id_of(f.old) for f in self.files})

    def to_json(self) -> dict[str, Any]:
        return {"rewrite_id": self.rewrite_id, "command": self.command, "reason": self.reason, "by": self.by, "at": self.at,
                "drop": self.drop.to_json(), "files": [dataclasses.asdict(f) for f in self.files], "extra": self.extra}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> Plan:
        try:
            return cls(obj["rewrite_id"], obj["command"], obj.get("reason", ""), obj.get("by", ""), obj.get("at", ""),
                       Drop.from_json(obj["drop"]), tuple(FilePlan(f["old"], f["new"]) for f in obj["files"]), obj.get("extra", {}))
        except (KeyError, TypeError) as exc:
            raise DamagedObjectError(f"{where} is damaged ({exc}): it is not celery-archive's plan") from exc


def plan(sink: Sink, command: str, reason: str, drop: Drop, old_keys: Iterable[str], **extra: Any) -> Plan:
    """A plan for ``old_keys``: each gets a new key in its run, past every sequence number the
    run's files use."""
    now = dt.datetime.now(dt.timezone.utc)
    seqs: Counter[str] = Counter()
    for o in sink.list(layout.DATA):
        rid, seq = _seq(o.key)
        seqs[rid] = max(seqs[rid], seq)
    files = []
    for old in sorted(set(old_keys)):
        rid = layout.run_id_of(old)
        seqs[rid] += 1
        ext = old.rsplit("/", 1)[-1].split(".", 1)[1]
        files.append(FilePlan(old, f"{old.rsplit('/', 1)[0]}/{rid}-{seqs[rid]:05d}.{ext}"))
    keys = [key_name(f.old) for f in files if _exists(sink, key_name(f.old))]
    if keys:  # the audit event names every data key it destroys
        extra = {**extra, "keys_destroyed": keys}
    return Plan(f"{layout.new_run_id(now)}-{command}", command, reason, audit.who(), iso(now), drop, tuple(files), extra)


def _exists(sink: Sink, key: str) -> bool:
    try:
        sink.stat(key)
    except ObjectNotFoundError:
        return False
    return True


def _seq(key: str) -> tuple[str, int]:
    name = key.rsplit("/", 1)[-1].split(".", 1)[0]
    rid, _, seq = name.rpartition("-")
    return rid, int(seq) if seq.isdigit() else 0


def record(sink: Sink, p: Plan) -> None:
    """The plan, before anything changes (create-only)."""
    mf.write_json(sink, layout.rewrite_key(p.rewrite_id), p.to_json())


def pending(sink: Sink) -> list[Plan]:
    """Plans that a crash left unfinished, oldest first."""
    out = []
    for o in sink.list(layout.REWRITES):
        if o.key.endswith(".json"):
            with sink.open(o.key) as f:
                out.append(Plan.from_json(orjson.loads(f.read()), f"{o.key} in {sink.url}"))
    return out


@dataclass
class Done:
    """What one carrying-out of a plan changed."""

    plan: Plan
    results: int = 0  # rows taken out
    files_rewritten: int = 0
    files_removed: int = 0  # dropped whole (nothing kept)
    revisions: dict[str, str] = field(default_factory=dict)  # manifest revisions written: key -> sha256

    def to_json(self) -> dict[str, Any]:
        return {"rewrite_id": self.plan.rewrite_id, "results": self.results, "files_rewritten": self.files_rewritten,
                "files_removed": self.files_removed, "runs": self.plan.runs, "revisions": self.revisions}


def execute(sink: Sink, spool: Path, p: Plan) -> Done:
    """Carry out ``p`` (recorded), from wherever an earlier attempt stopped."""
    done = Done(p)
    for run_id in p.runs:
        _revise(sink, spool, p, run_id, done)
    _reindex(sink, spool, p)
    shredded = set(p.extra.get("keys_destroyed", []))
    for f in p.files:
        if key_name(f.old) in shredded and sink.retention(f.old) is not None:
            sink.delete(f.old)  # Object Lock keeps its bytes (it must); no key to read them remains
        else:
            sink.erase(f.old)
        sink.erase(key_name(f.old))  # its data key: every copy of the old file is unreadable now
    # a crash between the two records the event again on the re-run, with the same rewrite_id
    audit.record(sink, p.command, reason=p.reason, requested_by=p.by, requested_at=p.at, rewrite_id=p.rewrite_id,
                 results=p.extra.get("results", done.results), runs=p.runs, files=len(p.files),
                 manifests=done.revisions, **{k: v for k, v in p.extra.items() if k != "results"})
    sink.delete(layout.rewrite_key(p.rewrite_id))
    return done


def finish_pending(sink: Sink, spool: Path) -> list[Done]:
    """Carry out every plan a crash left (under the lease: forget, prune and run call it)."""
    return [execute(sink, spool, p) for p in pending(sink)]


def _revise(sink: Sink, spool: Path, p: Plan, run_id: str, done: Done) -> None:
    """Step 1 for one run: its new files, then its new manifest revision."""
    revisions = mf.manifest_revisions(sink, run_id)
    if not revisions:
        return
    rev, key = revisions[-1]
    raw = sink.read(key)
    manifest = mf.Manifest.from_json(orjson.loads(raw), f"{key} in {sink.url}")
    current = {e.key: e for e in manifest.files}
    replaced: dict[str, mf.FileEntry | None] = {}
    for f in p.files:
        if f.old in current:
            entry, removed = _rewrite_file(sink, spool, current[f.old], f.new, p.drop)
            replaced[f.old] = entry
            done.results += removed
            if entry is None:
                done.files_removed += 1
            else:
                done.files_rewritten += 1
    if not replaced:  # revised before a crash: registered (again: idempotent), and named by the event
        if manifest.extra.get("rewritten_by") == p.rewrite_id:
            done.revisions[key] = chain.register(sink, manifest)
        return
    files = tuple(e for e in (replaced.get(x.key, x) for x in manifest.files) if e is not None)
    revised = dataclasses.replace(
        manifest, files=files, totals=mf.Totals.of(files), manifest_version=max(manifest.manifest_version, MANIFEST_VERSION),
        chain=chain.link(sink),  # a commit of its own, at the head (chain.py's rule)
        extra={**manifest.extra, "supersedes": hashlib.sha256(raw).hexdigest(), "revision": rev + 1, "rewritten_by": p.rewrite_id})
    mf.write_json(sink, layout.manifest_key(run_id, rev + 1), revised.to_json())
    done.revisions[layout.manifest_key(run_id, rev + 1)] = chain.register(sink, revised)


def _rewrite_file(sink: Sink, spool: Path, entry: mf.FileEntry, new: str, drop: Drop) -> tuple[mf.FileEntry | None, int]:
    """(the new file's entry, or None if nothing is kept; rows taken out)."""
    if drop.whole(entry):
        return None, entry.rows
    new_path = spool / ("rewrite-" + new.rsplit("/", 1)[-1])
    try:
        try:
            download(sink, new, new_path)  # written before a crash: complete (puts are all or nothing)
            cipher = _new_cipher(sink, entry, new)
        except ObjectNotFoundError:
            cipher = _new_cipher(sink, entry, new)
            if not _write_without(sink, spool, entry, new_path, drop, cipher):
                return None, entry.rows
            sink.put(new, new_path, _sha256(new_path))
        kept = _entry(new, new_path, entry, cipher)
        return kept, entry.rows - kept.rows
    finally:
        new_path.unlink(missing_ok=True)


def _new_cipher(sink: Sink, entry: mf.FileEntry, new: str) -> Cipher | None:
    """The new file's own data key, when the old one is encrypted (again: the one stored before a crash)."""
    if entry.encryption_key is None:
        return None
    enc = encryption_of(sink)
    if enc is None:
        raise KeyMaterialError(f"{entry.key} in {sink.url} is encrypted: give the sink URL with its key (encrypt=...) "
                               "to rewrite it")
    if _exists(sink, key_name(new)):
        return enc.cipher(sink, new)
    return enc.new_cipher(sink, new)


def _write_without(sink: Sink, spool: Path, entry: mf.FileEntry, dest: Path, drop: Drop, cipher: Cipher | None) -> int:
    """The old file's rows that stay, written to ``dest`` in its format (under ``cipher``, the
    new file's own key, if encrypted); how many."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.compute as pc

    src = spool / ("rewrite-old-" + entry.key.rsplit("/", 1)[-1])
    kept = 0
    try:
        size, sha256 = download(sink, entry.key, src)
        if (size, sha256) != (entry.bytes, entry.sha256):
            raise DamagedObjectError(f"data file {entry.key} in {sink.url} is not what its manifest says ({size:,} bytes, "
                                     f"sha256 {sha256[:12]}...): nothing was changed; `celery-archive verify --sink {sink.url}` "
                                     "names the damage")
        with ThreadPoolExecutor(max_workers=1) as pool:
            writer = module(entry.format).FileWriter(dest, entry.compression or "none", pool, cipher)
            try:
                for t in read_tables(src, entry.format, entry.compression, field_names(), cipher=cipher_of(sink, entry)):
                    t = t.filter(pc.invert(drop.mask(t)))
                    if t.num_rows:
                        writer.write(conform(t))
                        kept += t.num_rows
            finally:
                writer.close()
    finally:
        src.unlink(missing_ok=True)
    if not kept:
        dest.unlink(missing_ok=True)
    return kept


def _sha256(path: Path) -> str:
    from celery_archive.formats.writer import file_sha256

    return file_sha256(path)


def _entry(key: str, path: Path, old: mf.FileEntry, cipher: Cipher | None) -> mf.FileEntry:
    """A manifest entry for the new file, from its bytes (it is read back whole)."""
    import pyarrow.compute as pc

    ids, kinds, rows = hashlib.sha256(), Counter[str](), 0
    lo: dt.datetime | None = None
    hi: dt.datetime | None = None
    for t in read_tables(path, old.format, old.compression, ["kind", "task_id", "date_done"], cipher=cipher):
        feed_ids(ids, t.column("kind"), t.column("task_id"))
        kinds.update(t.column("kind").to_pylist())
        rows += t.num_rows
        a, b = (v.as_py() for v in pc.min_max(t.column("date_done")).values())
        lo = a if lo is None or (a is not None and a < lo) else lo
        hi = b if hi is None or (b is not None and b > hi) else hi
    return dataclasses.replace(old, key=key, rows=rows, bytes=path.stat().st_size, sha256=_sha256(path), ids_sha256=ids.hexdigest(),
                               min_date_done=iso(lo) if lo else old.min_date_done, max_date_done=iso(hi) if hi else old.max_date_done,
                               kinds=dict(kinds), encryption_key=None if cipher is None else cipher.name)


def _reindex(sink: Sink, spool: Path, p: Plan) -> None:
    """Step 2: the index without the old files and the ids that go, with the new files."""
    from celery_archive.index.packs import rewrite

    new = {f.new for f in p.files}
    added = []
    for run_id in p.runs:
        for e in mf.load_manifest(sink, run_id).files:
            if e.key in new:
                path = spool / "rewrite-locate.data"
                try:
                    download(sink, e.key, path)
                    added.append(locate(path, e.key, e.format, e.compression, cipher_of(sink, e)))
                finally:
                    path.unlink(missing_ok=True)
    rewrite(sink, spool, {f.old for f in p.files}, added, None if p.drop.before is not None else p.drop.ids_mask)
