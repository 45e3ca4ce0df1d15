"""Tamper evidence: the hash chain of an archive's committed manifests.

Each manifest committed since manifest v2 carries ``chain``: its position ``seq`` (1, 2, ... in
commit order; commits are serialized by the archive's lease) and ``previous``, the run id and
sha256 of the stored bytes of the manifest committed just before it (null at position 1). The
head, the sha256 of the last one, thus stands for every manifest before it: ``verify --json``
prints it to be kept elsewhere, and ``verify --head SHA`` checks that a head kept earlier is
still in the chain (which catches manifests removed from the end). Manifests written before v2
have no link and verify as before: the chain starts at the first manifest that has one.

``chain/<seq>.json`` (create-only, never removed) registers each position: ``seq``, ``run_id``,
``sha256`` and ``supersedes`` (below). It is the head's lookup (list, read the last) and the
list verify walks. A run commits (``outcomes/<run>.json``, holding the linked manifest), then
registers, then publishes ``manifests/<run>.json``; a run that died between commit and register
is registered by the next run's recovery (``register`` is idempotent) before that run links.

Superseding versions (forget, prune rewrite a run's files): a new revision of a run's manifest
is a commit of its own. It takes the next position (``chain=link(sink)``, so its ``previous``
is the head, not its predecessor's link), names the sha256 of the revision it replaces in
``supersedes`` (the stored bytes' sha256, as text), and is registered like any other
(``register``, idempotent: call it again when a crash may have come between writing the
revision and registering it). ``register`` records in the position what the replaced revision
was: ``supersedes: {sha256, seq, previous}``, so the chain still accounts for it should it ever
be removed, and for a revision replaced twice (keep the old revision until its successor is
registered: one removed before cannot have its own link checked any more). The rule verify applies, position by position:

* position n's manifest is stored with the sha256 its register records, and its ``previous``
  is position n-1's sha256; or
* a later position supersedes that sha256: the old revision may be gone (or still there), and
  its link to n-1 is what that later position recorded of it; or
* position n supersedes a revision that is still stored, and its own manifest is not stored
  (a note, not a break: a forget or prune stopped between registering and writing it).

A stored manifest with a link that no position registers is a break too, unless it is the one
right after the head (a run or rewrite stopped between writing and registering it: a note; the
next run, or the rewrite's re-run, registers it). Revisions may be kept beside the ones they
replace (``manifests/<run>@<rev>.json``) or replace them: the chain hashes every object under
``manifests/``.

Anything else is a break, named: a position missing from ``chain/``, a committed manifest
removed (``manifest rebuild`` is named when its commit record still holds it), a manifest whose
bytes changed, a link that does not match the position before it, a linked manifest that no
position registers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import CHAIN, MANIFESTS, chain_key
from celery_archive.archive.manifest import Manifest
from celery_archive.errors import DamagedObjectError, ObjectExistsError, SinkError
from celery_archive.sinks import Sink


@dataclass(frozen=True)
class Position:
    """``chain/<seq>.json``: which run's manifest (by the sha256 of its bytes) holds position ``seq``."""

    seq: int
    run_id: str
    sha256: str
    supersedes: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_json(sink: Sink, key: str) -> Any:
    with sink.open(key) as f:
        data = f.read()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DamagedObjectError(f"{key} in {sink.url} is not valid JSON ({exc}): the archive's hash chain is damaged") from exc


def _position(sink: Sink, key: str) -> Position:
    obj = _read_json(sink, key)
    try:
        return Position(int(obj["seq"]), str(obj["run_id"]), str(obj["sha256"]), obj.get("supersedes"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedObjectError(f"{key} in {sink.url} is not a chain position: the archive's hash chain is damaged") from exc


def positions(sink: Sink) -> list[Position]:
    return [_position(sink, o.key) for o in sink.list(CHAIN) if o.key.endswith(".json")]


def registered_runs(sink: Sink) -> set[str] | None:
    """Runs the chain registers: each committed (its results may have left the source), whatever
    else of it was removed; None if the chain cannot be read (then treat every run as registered)."""
    try:
        return {p.run_id for p in positions(sink)}
    except SinkError:  # DamagedObjectError among them
        return None


def head(sink: Sink) -> Position | None:
    """The last registered position (one listing, one read)."""
    last = None
    for o in sink.list(CHAIN):
        if o.key.endswith(".json"):
            last = o.key
    return None if last is None else _position(sink, last)


def link(sink: Sink) -> dict[str, Any]:
    """The ``chain`` of the next manifest to commit: only the holder of the archive's lease calls it."""
    h = head(sink)
    return {"seq": 1 if h is None else h.seq + 1, "previous": None if h is None else {"run_id": h.run_id, "sha256": h.sha256}}


def superseding(old: Manifest) -> str:
    """``supersedes`` of a new revision of ``old``'s run: the sha256 of ``old`` as stored."""
    return mf.manifest_sha256(old)


def _replaced(sink: Sink, run_id: str, sha: str) -> dict[str, Any]:
    """What a position records of the revision (sha256 ``sha``) its manifest supersedes."""
    for o in sink.list(f"{MANIFESTS}{run_id}"):
        data = sink.read(o.key)
        if hashlib.sha256(data).hexdigest() == sha:
            old = Manifest.from_json(orjson.loads(data), o.key)
            link = old.chain or {}
            return {"sha256": sha, "seq": link.get("seq"), "previous": link.get("previous")}
    return {"sha256": sha, "seq": None, "previous": None}


def register(sink: Sink, manifest: Manifest) -> str:
    """Record ``manifest``'s position (idempotent); returns its sha256."""
    sha = mf.manifest_sha256(manifest)
    if manifest.chain is None:
        return sha
    seq = int(manifest.chain["seq"])
    key = chain_key(seq)
    if any(o.key == key for o in sink.list(key)):
        there = _position(sink, key)
        if (there.run_id, there.sha256) != (manifest.run_id, sha):
            raise SinkError(f"chain position {seq} in {sink.url} is registered for run {there.run_id}, not for run "
                            f"{manifest.run_id}: `celery-archive verify --sink {sink.url}` names the break")
        return sha
    old = manifest.extra.get("supersedes")
    pos = Position(seq, manifest.run_id, sha, _replaced(sink, manifest.run_id, old) if isinstance(old, str) else None)
    try:
        mf.write_json(sink, key, pos.to_json())
    except ObjectExistsError:
        return register(sink, manifest)  # another writer got there between the two: the same check
    return sha


def commit(sink: Sink, manifest: Manifest) -> tuple[Manifest, str]:
    """Link ``manifest`` to the head, commit it, register and publish it: (linked manifest, sha256)."""
    linked = dataclasses.replace(manifest, chain=link(sink))
    mf.decide(sink, linked)
    sha = register(sink, linked)
    mf.publish(sink, linked)
    return linked, sha


@dataclass
class ChainReport:
    head: str | None = None  # sha256 of the last registered manifest
    head_run: str | None = None
    length: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_UNKNOWN: Any = object()
_REBUILT = "rebuilt: run"


def _stored(sink: Sink) -> dict[str, tuple[str, Manifest | None]]:
    """sha256 -> (run id, manifest or None when damaged) of every stored manifest version."""
    out: dict[str, tuple[str, Manifest | None]] = {}
    for o in sink.list(MANIFESTS):
        if not o.key.endswith(".json"):
            continue
        with sink.open(o.key) as f:
            data = f.read()
        try:
            m: Manifest | None = Manifest.from_json(orjson.loads(data), o.key)
        except (orjson.JSONDecodeError, DamagedObjectError):
            m = None  # verify reports the damage by itself
        out[hashlib.sha256(data).hexdigest()] = (m.run_id if m else o.key[len(MANIFESTS):-5], m)
    return out


def _sha(previous: dict[str, Any] | None) -> str | None:
    return None if previous is None else str(previous.get("sha256"))


def check(sink: Sink, expect_head: str | None = None) -> ChainReport:
    """Walk the chain (see the module's docstring for the rule); every break is a problem naming its run."""
    report = ChainReport()
    regs = {p.seq: p for p in positions(sink)}
    stored = _stored(sink)
    replaced = {p.supersedes["sha256"]: p for p in regs.values() if p.supersedes}
    registered = {p.sha256 for p in regs.values()}
    expected: Any = None
    altered_runs: set[str] = set()
    for seq in range(1, max(regs, default=0) + 1):
        pos = regs.get(seq)
        if pos is None:
            report.problems.append(f"chain position {seq} ({chain_key(seq)}) is missing: removed from the archive")
            expected = _UNKNOWN
            continue
        here: Any = _UNKNOWN
        m = stored.get(pos.sha256, ("", None))[1]
        if m is not None:
            if m.chain is None or m.chain.get("seq") != seq:
                report.problems.append(f"run {pos.run_id}: its manifest does not carry chain position {seq}, which "
                                       f"{chain_key(seq)} records for it")
            else:
                here = m.chain.get("previous")
        elif pos.sha256 in replaced and replaced[pos.sha256].seq > seq:
            was = replaced[pos.sha256].supersedes or {}
            here = was.get("previous") if was.get("seq") == seq else _UNKNOWN  # unknown: gone before its successor registered
        elif pos.supersedes and pos.supersedes.get("sha256") in stored and not any(
                run_id == pos.run_id and sha not in registered for sha, (run_id, _) in stored.items()):  # not written yet
            report.notes.append(f"run {pos.run_id}: a new version of its manifest (chain position {seq}) is registered but "
                                "not in place yet, the old one still is: an interrupted forget or prune; running it again "
                                "finishes it")
        else:
            gone = _gone(sink, pos, stored, registered)
            if gone is not None:
                (report.notes if gone.startswith(_REBUILT) else report.problems).append(gone)
                altered_runs.add(pos.run_id)
        if here is not _UNKNOWN and expected is not _UNKNOWN and _sha(here) != _sha(expected):
            before = "nothing" if here is None else f"run {here.get('run_id')}'s manifest (sha256 {_sha(here)})"
            report.problems.append(f"chain broken at position {seq} (run {pos.run_id}): it links to {before}, but position "
                                   f"{seq - 1} holds " + ("nothing" if expected is None else
                                                          f"run {expected['run_id']}'s manifest (sha256 {expected['sha256']})"))
        expected = {"run_id": pos.run_id, "sha256": pos.sha256}
        report.length, report.head, report.head_run = seq, pos.sha256, pos.run_id
    for sha, (run_id, m) in sorted(stored.items(), key=lambda kv: kv[1][0]):
        if m is None or m.chain is None or sha in registered or sha in replaced:
            continue
        if run_id in altered_runs:
            continue  # named above as altered
        if m.chain.get("seq") == report.length + 1 and _sha(m.chain.get("previous")) == report.head:
            report.notes.append(f"run {run_id} committed but its chain position is not registered yet (a run stopped "
                                "between the two): the next run registers it")
        else:
            report.problems.append(f"run {run_id}: its manifest claims chain position {m.chain.get('seq')}, which "
                                   f"{CHAIN} does not record for it: the manifest or the chain was altered")
    if expect_head and expect_head not in registered:
        report.problems.append(f"the head kept earlier ({expect_head}) is not in the chain: manifests were removed "
                               "from its end, or the chain was rewritten")
    return report


def _gone(sink: Sink, pos: Position, stored: dict[str, tuple[str, Manifest | None]], registered: set[str]) -> str | None:
    """What became of position ``pos``'s manifest, which is not stored with its sha256 (None:
    it is there but damaged, which verify reports by itself)."""
    where = f"chain position {pos.seq}, sha256 {pos.sha256}"
    altered = [sha for sha, (run_id, m) in stored.items() if run_id == pos.run_id and sha not in registered]
    if altered and all(stored[sha][1] is None for sha in altered):
        return None
    if altered and all(getattr(stored[sha][1], "extra", {}).get("supersedes") == pos.sha256 for sha in altered):
        return None  # replaced by a revision not registered yet: the check of unregistered manifests names it
    if altered and all(getattr(stored[sha][1], "rebuilt", False) for sha in altered):
        return (f"{_REBUILT} {pos.run_id}'s committed manifest ({where}) was lost and `manifest rebuild` made one from its "
                "data files: they verify against that one, but the manifest it committed can no longer be shown")
    if altered:
        return f"run {pos.run_id}: its manifest was altered after it was committed (sha256 now {altered[0]}; {where})"
    outcome = mf.load_outcome(sink, pos.run_id)
    if outcome is not None and outcome.manifest is not None and mf.manifest_sha256(outcome.manifest) == pos.sha256:
        return (f"run {pos.run_id}: its committed manifest ({where}) is missing from the archive; its commit record holds "
                f"it: `celery-archive manifest rebuild --sink {sink.url} --run {pos.run_id}` writes it again")
    return f"run {pos.run_id}: its committed manifest ({where}) was removed from the archive"
