"""Write and commit: the run's batches into data files (each put to the sink when complete and
verified from there while extraction goes on), then the manifest and the commit decision."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from celery_archive.archive import chain
from celery_archive.archive.manifest import FileEntry, Manifest
from celery_archive.formats.writer import ArchiveWriter
from celery_archive.pipeline.commit import Checks, manifest_of, record_commit
from celery_archive.pipeline.extract import StopEarly

if TYPE_CHECKING:
    import pyarrow as pa

    from celery_archive.backends import Source
    from celery_archive.config import RunConfig
    from celery_archive.pipeline.rules import Applied
    from celery_archive.sinks import Sink


@dataclass(frozen=True)
class Written:
    manifest: Manifest
    entries: list[FileEntry]
    selected: int
    stopped_by: str | None  # max_runtime | signal, when the run stopped taking early


def write_and_commit(sink: Sink, source: Source, cfg: RunConfig, run_id: str, now: dt.datetime, cutoff: dt.datetime,
                     spool: Path, checks: Checks, batches: Iterable[pa.Table], applied: Applied | None,
                     fence: Callable[[], None]) -> Written:
    """Every batch written; the run committed once the lease is checked (``fence``). On any
    failure before the commit, what was written is removed and nothing was decided."""
    writer = ArchiveWriter(sink, run_id, cfg.format, cfg.compression, cfg.max_file_bytes, spool, on_put=checks.verifier.submit)
    selected, stopped_by = 0, None
    try:
        try:
            for cols in batches:
                selected += cols.num_rows
                writer.write(cols)
        except StopEarly as why:
            stopped_by = str(why.args[0])
        entries = writer.close()
        manifest = manifest_of(run_id, now, cutoff, source, cfg, entries, selected, applied.counts() if applied else None)
        fence()
        manifest, sha = chain.commit(sink, manifest)  # the commit point, linked to the archive's hash chain
    except BaseException:
        writer.abort()
        checks.abandon()
        raise
    record_commit(sink, manifest, sha, selected, cfg)
    return Written(manifest, entries, selected, stopped_by)
