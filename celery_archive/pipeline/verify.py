"""Verify: read every data file of a run back from the sink and check bytes, sha256, row
count and that it holds exactly the ids that were extracted into it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_archive.errors import SinkError
from celery_archive.pipeline.locate import locate
from celery_archive.pipeline.readback import ids_digest
from celery_archive.sinks import Sink, download

if TYPE_CHECKING:
    import pyarrow as pa

    OnLocated = Callable[[pa.Table], None]


@dataclass(frozen=True)
class VerifiedFile:
    entry: dict[str, Any]
    path: Path  # the verified local copy, read again by purge


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


def check_file(sink: Sink, entry: dict[str, Any], dest: Path) -> tuple[str | None, pa.Table | None]:
    """(None, where each record sits) if the stored file matches its manifest entry, else
    (what is wrong, None)."""
    key = entry["key"]
    try:
        size, sha = download(sink, key, dest)
    except SinkError as exc:
        return f"{key}: cannot be read back: {exc}", None
    if size != entry["bytes"]:
        return f"{key}: {size} bytes stored, manifest says {entry['bytes']}", None
    if sha != entry["sha256"]:
        return f"{key}: sha256 {sha} does not match the manifest's {entry['sha256']}", None
    try:
        table = locate(dest, key, entry["format"], entry["compression"])
        digest = ids_digest(table["kind"], table["task_id"])
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not what was written
        return f"{key}: unreadable as {entry['format']}: {type(exc).__name__}: {exc}", None
    if table.num_rows != entry["rows"]:
        return f"{key}: holds {table.num_rows} rows, manifest says {entry['rows']}", None
    if digest != entry["ids_sha256"]:
        return f"{key}: the task ids in the file are not the ones extracted into it", None
    return None, table


def verify_run(sink: Sink, manifest: dict[str, Any], spool: Path, keep: bool = False,
               on_located: OnLocated | None = None) -> VerifyReport:
    """Check every file of ``manifest``; with ``keep`` the verified copies stay in ``spool``;
    ``on_located`` gets each verified file's index entries, in manifest order."""
    report = VerifyReport(manifest["run_id"])
    total = 0
    dests = [spool / f"verify-{manifest['run_id']}-{i:05d}" for i in range(len(manifest["files"]))]
    # reading, hashing and decoding release the GIL: check two files at a time
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="celery-archive-verify") as pool:
        checks = pool.map(lambda ed: check_file(sink, *ed), zip(manifest["files"], dests))
        for entry, dest, (problem, located) in zip(manifest["files"], dests, checks):
            report.files += 1
            total += int(entry["rows"])
            if problem:
                report.problems.append(problem)
            elif on_located is not None and located is not None:
                on_located(located)
            if not problem and keep:
                report.verified.append(VerifiedFile(entry, dest))
                continue
            dest.unlink(missing_ok=True)
    expected = manifest["totals"]["rows"]
    if total != expected:
        report.problems.append(f"manifest lists {total} rows in its files but {expected} were extracted")
    report.rows = total
    if not report.ok:
        discard(report)
    return report


def discard(report: VerifyReport) -> None:
    for v in report.verified:
        v.path.unlink(missing_ok=True)
    report.verified.clear()
