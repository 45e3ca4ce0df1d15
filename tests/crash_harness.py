"""Run an archive and SIGKILL this process at a stage boundary: the test re-runs after it.

    python crash_harness.py STAGE SOURCE SINK
STAGE: after-extract | after-data | after-commit | after-manifest | mid-purge
(after-commit: its commit record written, before its hash chain position and its manifest)
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import celery_archive.pipeline.run as run_mod
from celery_archive import RunConfig, parse_duration, run
from celery_archive.archive import manifest as mf
from celery_archive.formats.writer import ArchiveWriter


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    stage, source, sink = sys.argv[1:4]
    real_open = run_mod.open_source

    def open_source(cfg: RunConfig) -> Any:
        src = real_open(cfg)
        if stage == "after-extract":
            extract = src.extract

            def extract_then_die(*a: Any, **kw: Any) -> Any:
                yield from extract(*a, **kw)
                die()

            src.extract = extract_then_die  # type: ignore[method-assign]
        if stage == "mid-purge":
            purge, calls = src.purge, []

            def purge_then_die(batch: Any) -> Any:
                result = purge(batch)
                calls.append(result)
                if len(calls) == 2:
                    die()
                return result

            src.purge = purge_then_die  # type: ignore[method-assign]
        return src

    run_mod.open_source = open_source  # type: ignore[assignment]
    if stage == "after-data":
        close = ArchiveWriter.close

        def close_then_die(self: ArchiveWriter) -> Any:
            close(self)
            die()

        ArchiveWriter.close = close_then_die  # type: ignore[method-assign]
    if stage in ("after-commit", "after-manifest"):
        write_json = mf.write_json
        last = mf.OUTCOMES if stage == "after-commit" else mf.MANIFESTS

        def write_then_die(sink: Any, key: str, obj: Any) -> None:
            write_json(sink, key, obj)
            if key.startswith(last):
                die()

        mf.write_json = write_then_die  # type: ignore[assignment]
    run(RunConfig(source=source, sink=sink, older_than=parse_duration("30d"), max_file_bytes=2048, purge_batch=7, batch_size=16,
                  lease_ttl=1.0))  # the re-run after the kill watches the dead run's lease this long
    print("finished without being killed")


if __name__ == "__main__":
    main()
