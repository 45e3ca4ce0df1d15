"""``manifest rebuild``: make a lost manifest again. From the run's commit record when it has
one (the very manifest it committed), otherwise from its data files themselves (what each
holds, its size, sha256 and ids digest, exactly as the writer computes them) and its run report.
Only runs that committed are rebuilt: a run with no outcome, no run report and no restore
index entries never committed, and the next ``run`` removes its files."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.archive import chain
from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import manifest_key
from celery_archive.archive.manifest import FileEntry, Format, Manifest, RunRecord, Totals
from celery_archive.backends.codec import SERIALIZERS
from celery_archive.crypto import JSONL_MAGIC, Cipher, cipher_at
from celery_archive.errors import DamagedObjectError, ObjectNotFoundError
from celery_archive.formats import locate, module, read_tables
from celery_archive.formats.entries import ids_digest
from celery_archive.index.packs import DeltaWriter, referenced_runs
from celery_archive.schemas import MANIFEST_VERSION, RECORD_VERSION, field_names
from celery_archive.sinks import download
from celery_archive.times import iso
from celery_archive.version import __version__

if TYPE_CHECKING:
    from celery_archive.sinks import Sink

_CODECS = {"ZSTD": "zstd", "SNAPPY": "snappy", "GZIP": "gzip", "UNCOMPRESSED": None}


@dataclass
class RebuildReport:
    sink: str
    rebuilt: list[dict[str, Any]] = field(default_factory=list)  # run_id, source (outcome | data files), files, rows
    skipped: list[dict[str, str]] = field(default_factory=list)  # run_id, why

    def to_json(self) -> dict[str, Any]:
        return {"command": "manifest rebuild", **asdict(self)}


def _cipher(sink: Sink, key: str, path: Path) -> Cipher | None:
    """The key of a data file whose bytes say it is encrypted (an encrypted footer, a header)."""
    with open(path, "rb") as f:
        head = f.read(len(JSONL_MAGIC))
        f.seek(max(f.seek(0, 2) - 4, 0))
        tail = f.read(4)
    return cipher_at(sink, key, encrypted=tail == b"PARE" if key.endswith(".parquet") else head == JSONL_MAGIC)


def _format(key: str, path: Path, cipher: Cipher | None) -> tuple[str, str | None, int]:
    """(format, compression, record schema version) of a data file."""
    if key.endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path, decryption_properties=cipher and cipher.parquet_read()).metadata
        codec = meta.row_group(0).column(0).compression if meta.num_row_groups else "UNCOMPRESSED"
        version = int((meta.metadata or {}).get(b"celery_archive.record_version", RECORD_VERSION))
        return "parquet", _CODECS.get(str(codec).upper(), str(codec).lower()), version
    compression = "zstd" if key.endswith(".zst") else "gzip" if key.endswith(".gz") else None
    names = set(module("jsonl").first_record(path, compression, (), cipher))  # JSONL: its fields tell (versions only add fields)
    version = max((v for v in range(1, RECORD_VERSION + 1) if set(field_names(v)) <= names), default=1)
    return "jsonl", compression, version


def file_entry(sink: Sink, key: str, dest: Path) -> tuple[FileEntry, dict[str, Any], Any]:
    """(manifest entry, one record's source fields, index entries) of the stored file ``key``."""
    import pyarrow.compute as pc

    size, sha = download(sink, key, dest)
    cipher = _cipher(sink, key, dest)
    fmt, compression, version = _format(key, dest, cipher)
    located = locate(dest, key, fmt, compression, cipher)
    dates = [t.column("date_done") for t in read_tables(dest, fmt, compression, ["date_done"], cipher=cipher)]
    lo = min(pc.min(d).as_py() for d in dates)
    hi = max(pc.max(d).as_py() for d in dates)
    first = next(read_tables(dest, fmt, compression, ["source", "source_table", "kind", "content_type", "storage_format"], 1,
                             cipher))
    entry = FileEntry(key, Format(fmt), compression, located.num_rows, size, sha, ids_digest(located["kind"], located["task_id"]),
                      iso(lo), iso(hi), dict(Counter(located["kind"].to_pylist())),
                      None if cipher is None else cipher.name)
    return entry, {**first.slice(0, 1).to_pylist()[0], "schema_version": version}, located


def _from_files(sink: Sink, run_id: str, keys: list[str], spool: Path, report: RunRecord | None) -> tuple[Manifest, list[Any]]:
    entries, records, located = [], [], []
    for i, key in enumerate(keys):
        entry, rec, loc = file_entry(sink, key, spool / f"rebuild-{i}")
        (spool / f"rebuild-{i}").unlink(missing_ok=True)
        entries.append(entry)
        records.append(rec)
        located.append(loc)
    by_type = {ctype: name for name, (ctype, _enc) in SERIALIZERS.items()}
    sql = [r for r in records if not str(r["storage_format"]).endswith("redis")]
    tables = {r["kind"]: r["source_table"] for r in sql}
    created = dt.datetime.strptime(run_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ")
    manifest = Manifest(
        run_id=run_id, created_at=iso(created), source=records[0]["source"], source_tables=tables,
        cutoff=max(e.max_date_done for e in entries), older_than="unknown",
        serializer=by_type.get(records[0]["content_type"], "json"), delete=report.purged if report else True,
        tool_version=__version__, files=tuple(entries), totals=Totals.of(entries), rules=None,
        manifest_version=MANIFEST_VERSION, schema_version=min(r["schema_version"] for r in records),
        extra={"rebuilt": {"at": dt.datetime.now(dt.timezone.utc).isoformat(), "tool_version": __version__,
                           "from": "data files and run report" if report else "data files",
                           "note": "cutoff is the newest date_done found; the run's own cutoff and older_than are not known"}},
    )
    return manifest, located


def _replace_damaged(sink: Sink, run_id: str, out: RebuildReport) -> None:
    """A manifest that is there but cannot be read (not JSON, a field missing or of the wrong
    type) is written again from the run's commit record, which holds the very manifest it
    committed; the messages about a damaged manifest point here."""
    try:
        mf.load_manifest(sink, run_id)
        return
    except ObjectNotFoundError:
        return
    except DamagedObjectError as exc:
        damage = str(exc)
    try:
        outcome = mf.load_outcome(sink, run_id)
    except DamagedObjectError as exc:
        outcome, damage = None, f"{damage}; its commit record too: {exc}"
    if outcome is None or outcome.manifest is None:
        out.skipped.append({"run_id": run_id, "why": f"its manifest is damaged and no commit record holds it ({damage})"})
        return
    sink.delete(manifest_key(run_id))
    mf.publish(sink, outcome.manifest)
    out.rebuilt.append({"run_id": run_id, "source": "outcome (a damaged manifest replaced)", "files": len(outcome.manifest.files),
                        "rows": outcome.manifest.totals.rows})


def rebuild_manifests(sink: Sink, spool: Path, run_id: str | None = None) -> RebuildReport:
    """Write again the manifest of every committed run whose data files no manifest names
    (or of ``run_id``); call under the archive's lease."""
    out = RebuildReport(sink.url)
    committed = mf.committed_runs(sink)
    for rid in sorted(committed) if run_id is None else [r for r in committed if r == run_id]:
        _replace_damaged(sink, rid, out)
    if run_id is not None and any(r["run_id"] == run_id for r in out.rebuilt + out.skipped):
        return out
    uncommitted = mf.uncommitted_files(sink, set(committed))
    if run_id is not None:
        if run_id not in uncommitted:
            out.skipped.append({"run_id": run_id, "why": "it has a manifest, or no data files"})
            return out
        uncommitted = {run_id: uncommitted[run_id]}
    reports, indexed, chained = mf.reports(sink), referenced_runs(sink), chain.registered_runs(sink)
    for rid, keys in sorted(uncommitted.items()):
        outcome = mf.load_outcome(sink, rid)
        if outcome is not None and outcome.manifest is not None:  # committed: it holds the manifest
            chain.register(sink, outcome.manifest)  # if its run died between its commit and its registration
            mf.publish(sink, outcome.manifest)
            out.rebuilt.append({"run_id": rid, "source": "outcome", "files": len(outcome.manifest.files),
                                "rows": outcome.manifest.totals.rows})
            continue
        named = rid in reports or rid in indexed or chained is None or rid in chained
        if (outcome is not None and outcome.state is mf.ABANDONED) or not named:
            out.skipped.append({"run_id": rid, "why": "it never committed: its results are still in the source, "
                                                      "and the next run removes its files"})
            continue
        manifest, located = _from_files(sink, rid, sorted(keys), spool, reports.get(rid))
        mf.commit(sink, manifest)  # its outcome too: the manifest is never lost twice
        if rid not in indexed:
            delta = DeltaWriter(sink, rid, spool)
            for table in located:
                delta.add(table)
            delta.commit()
        out.rebuilt.append({"run_id": rid, "source": "data files", "files": len(keys), "rows": manifest.totals.rows})
    return out
