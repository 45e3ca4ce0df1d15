"""Verify: read every data file of a run back from the sink and check bytes, sha256, row
count and that it holds exactly the ids that were extracted into it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celery_archive.archive.manifest import FileEntry, Manifest
from celery_archive.crypto import cipher_of
from celery_archive.errors import ArchiveError, SinkError
from celery_archive.formats import locate_batches
from celery_archive.formats.entries import feed_ids, index_schema
from celery_archive.sinks import Sink, download

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.crypto import Cipher

    OnLocated = Callable[[pa.Table], None]


@dataclass(frozen=True)
class VerifiedFile:
    entry: FileEntry
    path: Path  # the verified local copy, read again by purge
    cipher: Cipher | None = None  # its key, when it is encrypted


@dataclass
class VerifyReport:
    run_id: str
    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    verified: list[VerifiedFile] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_file(sink: Sink, entry: FileEntry, dest: Path) -> str | None:
    """None if the stored file matches its manifest entry, else what is wrong. Where each
    record sits (its index entries) is spooled beside the copy, in ``located_path(dest)``,
    batch by batch: memory stays a row group's, not the file's."""
    key = entry.key
    try:
        size, sha = download(sink, key, dest)
    except SinkError as exc:
        return f"{key}: cannot be read back: {exc}"
    if size != entry.bytes:
        return f"{key}: {size} bytes stored, manifest says {entry.bytes}"
    if sha != entry.sha256:
        return f"{key}: sha256 {sha} does not match the manifest's {entry.sha256}"
    import pyarrow as pa

    h, rows = hashlib.sha256(), 0
    try:
        cipher = cipher_of(sink, entry)  # an encrypted file: its rows are checked decrypted, with its own key
    except ArchiveError as exc:
        return f"{key}: cannot be decrypted: {exc}"
    try:
        with pa.OSFile(str(located_path(dest)), "wb") as out, pa.ipc.new_file(out, index_schema()) as spooled:
            for table in locate_batches(dest, key, entry.format, entry.compression, cipher):
                feed_ids(h, table["kind"], table["task_id"])
                rows += table.num_rows
                spooled.write_table(table)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not what was written
        return f"{key}: unreadable as {entry.format}: {type(exc).__name__}: {exc}"
    if rows != entry.rows:
        return f"{key}: holds {rows} rows, manifest says {entry.rows}"
    if h.hexdigest() != entry.ids_sha256:
        return f"{key}: the task ids in the file are not the ones extracted into it"
    return None


def located_path(dest: Path) -> Path:
    """Where ``check_file`` spools the index entries of the verified copy ``dest``."""
    return dest.with_name(dest.name + ".located")


def spooled_entries(dest: Path) -> Iterator[pa.Table]:
    """The index entries spooled for ``dest``, a batch at a time."""
    import pyarrow as pa

    with pa.OSFile(str(located_path(dest))) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])


class Verifier:
    """Checks data files on threads of its own. A run in progress submits each file as soon as
    it is put, so that verification overlaps extraction; ``report`` then checks whatever file
    of the manifest was not submitted and waits for all. ``on_located`` gets each verified
    file's index entries in submission order, one file at a time."""

    def __init__(self, sink: Sink, run_id: str, spool: Path, keep: bool = False,
                 on_located: OnLocated | None = None, workers: int = 1) -> None:
        self.sink, self.run_id, self.spool, self.keep, self.on_located = sink, run_id, spool, keep, on_located
        # reading, hashing and decoding release the GIL: files can be checked side by side
        self._checks = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="celery-archive-verify")
        self._ordered = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-archive-located")
        self._files: dict[str, tuple[FileEntry, Path, Future[str | None]]] = {}

    def submit(self, entry: FileEntry) -> None:
        """Check the file ``entry`` describes (as its manifest will list it)."""
        dest = self.spool / f"verify-{self.run_id}-{len(self._files):05d}"
        check = self._checks.submit(check_file, self.sink, entry, dest)
        self._files[entry.key] = (entry, dest, self._ordered.submit(self._deliver, check, dest))

    def _deliver(self, check: Future[str | None], dest: Path) -> str | None:
        try:
            problem = check.result()
            if problem is None and self.on_located is not None:
                for located in spooled_entries(dest):
                    self.on_located(located)
        finally:
            located_path(dest).unlink(missing_ok=True)
        if problem is not None or not self.keep:
            dest.unlink(missing_ok=True)
        return problem

    def report(self, manifest: Manifest) -> VerifyReport:
        """Every file of ``manifest`` checked against its entry there."""
        report = VerifyReport(manifest.run_id)
        listed = {e.key for e in manifest.files}
        report.problems += [f"{key}: was written by the run but is not in its manifest" for key in self._files if key not in listed]
        for entry in manifest.files:
            if entry.key not in self._files:
                self.submit(entry)
        total = 0
        try:
            for entry in manifest.files:
                checked, dest, outcome = self._files[entry.key]
                report.files += 1
                total += entry.rows
                problem = outcome.result()
                if problem is None and checked != entry:
                    problem = f"{entry.key}: the manifest's entry is not the one the file was written with"
                if problem:
                    report.problems.append(problem)
                elif self.keep:
                    report.verified.append(VerifiedFile(entry, dest, cipher_of(self.sink, entry)))
        except BaseException:
            self.abandon()
            raise
        expected = manifest.totals.rows
        if total != expected:
            report.problems.append(f"manifest lists {total} rows in its files but {expected} were extracted")
        report.rows = total
        if report.ok:
            self._shutdown()
        else:
            report.verified.clear()
            self.abandon()
        return report

    def _shutdown(self) -> None:
        self._checks.shutdown(wait=True)
        self._ordered.shutdown(wait=True)

    def abandon(self) -> None:
        """Wait for the checks under way and remove every local copy (the run failed)."""
        self._shutdown()
        for _, dest, _ in self._files.values():
            dest.unlink(missing_ok=True)
            located_path(dest).unlink(missing_ok=True)


def verify_run(sink: Sink, manifest: Manifest, spool: Path, keep: bool = False,
               on_located: OnLocated | None = None) -> VerifyReport:
    """Check every file of ``manifest``; with ``keep`` the verified copies stay in ``spool``;
    ``on_located`` gets each verified file's index entries, in manifest order."""
    return Verifier(sink, manifest.run_id, spool, keep, on_located, workers=2).report(manifest)


def discard(report: VerifyReport) -> None:
    for v in report.verified:
        v.path.unlink(missing_ok=True)
    report.verified.clear()
