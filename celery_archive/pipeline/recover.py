"""Recovery: what a run does first, under the lease, about every earlier run that did not finish.

For a run with data files but no manifest, by its outcome (manifest.py):

* committed: it died between its commit and its manifest, or the manifest was lost: the
  manifest is written again from the outcome, and the run is finished below;
* abandoned: an earlier recovery decided it never commits and died removing its files: they go;
* none, but a run report, restore index entries or the hash chain name it: it committed (before outcomes were
  written, or they were lost too) and its results may have left the source: nothing of it is
  removed; it is reported, and ``celery-archive manifest rebuild`` makes its manifest again;
* none at all: it never committed (a crash before the commit): it is abandoned, the decision
  first, and only then are its files removed. Its results are all still in the source.

Then every committed run whose purge did not finish is verified and purged again. Before all
that, a ``forget`` or ``prune`` that a crash interrupted is finished (archive/rewrite.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celery_archive.archive import chain
from celery_archive.archive import manifest as mf
from celery_archive.archive.layout import DATA, KEYS, run_id_of
from celery_archive.config import RunConfig
from celery_archive.errors import ConfigError, SinkError
from celery_archive.index.packs import referenced_runs
from celery_archive.pipeline.commit import finish

if TYPE_CHECKING:
    from celery_archive.backends import Source
    from celery_archive.sinks import Sink


@dataclass
class Recovered:
    resumed: list[str] = field(default_factory=list)  # committed runs finished now
    orphans_removed: int = 0  # data files of runs that never committed
    restored: list[str] = field(default_factory=list)  # manifests written again from their outcome
    lost: list[str] = field(default_factory=list)  # runs kept though no manifest names them
    rewrites: list[str] = field(default_factory=list)  # interrupted forget/prune plans finished now
    damaged: list[str] = field(default_factory=list)  # run reports that could not be read (kept as they are)


def tidy(sink: Sink, run_id: str, fence: Callable[[], None]) -> Recovered:
    """Settle every run that has data files but no manifest (see the module's docstring)."""
    out = Recovered()
    committed = set(mf.committed_runs(sink))
    uncommitted = mf.uncommitted_files(sink, committed)
    for o in sink.list(f"{KEYS}{DATA}"):  # an encrypted run's data keys go with its files (one may have no file yet)
        rid = run_id_of(o.key[len(KEYS):].removesuffix(".json"))
        if rid not in committed:
            uncommitted.setdefault(rid, []).append(o.key)
    uncommitted.pop(run_id, None)
    if not uncommitted:
        return out
    reported = set(mf.reports(sink, damaged=[]))  # damage: named by recover()
    indexed: set[str] | None = None
    chained: set[str] | None = None
    for rid, keys in sorted(uncommitted.items()):
        outcome = mf.load_outcome(sink, rid)
        if outcome is None:
            if indexed is None:
                indexed, chained = referenced_runs(sink), chain.registered_runs(sink)
            if rid in reported or rid in indexed or chained is None or rid in chained:
                out.lost.append(rid)
                continue
            fence()
            outcome = mf.abandon(sink, rid, by=run_id)
        if outcome.manifest is not None:  # committed: it holds the manifest
            with contextlib.suppress(SinkError):  # its position taken by another run: verify names that break
                chain.register(sink, outcome.manifest)  # if it died between its commit and its registration
            mf.publish(sink, outcome.manifest)
            out.restored.append(rid)
            continue
        for key in keys:
            sink.delete(key)
        out.orphans_removed += sum(1 for k in keys if not k.startswith(KEYS))
    return out


def recover(sink: Sink, source: Source, spool: Path, cfg: RunConfig, run_id: str, fence: Callable[[], None]) -> Recovered:
    """Finish interrupted rewrites, settle dead runs, then finish committed runs whose purge never completed."""
    from celery_archive.archive.rewrite import finish_pending

    fence()
    rewrites = [done.plan.rewrite_id for done in finish_pending(sink, spool)]
    out = tidy(sink, run_id, fence)
    out.rewrites = rewrites
    done = mf.reports(sink, damaged=out.damaged)
    pending = sorted(r for r in mf.committed_runs(sink) if r not in done or not done[r].purged)
    if pending and not cfg.delete:
        raise ConfigError(
            f"{len(pending)} earlier run(s) ({', '.join(pending[:3])}) archived results that are still in the source; "
            "run once without --no-delete to purge them, or a --no-delete run would archive them twice"
        )
    for rid in pending:
        manifest = mf.load_manifest(sink, rid)
        # a rebuilt manifest knows its tables only from its records: the purge's exact match decides there
        tables = source.describe()  # it must still read every table or key pattern the run took from
        tables_differ = not manifest.rebuilt and any(tables.get(k) != v for k, v in manifest.source_tables.items())
        if manifest.source != source.display_url or tables_differ:
            raise ConfigError(f"run {rid} was archived from {manifest.source} and its purge did not finish: "
                              f"run again with --source for that backend to finish it")
        finish(sink, source, manifest, spool, cfg, fence=fence)
        out.resumed.append(rid)
    return out
