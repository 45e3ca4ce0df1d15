"""Staging directories: one private directory per command, removed after it, and left-overs of
processes that died (kill -9, power loss) removed by the next one.

A directory in use holds an exclusive ``flock`` on its ``.in-use`` file for as long as its
process lives; the kernel drops it when the process dies, whatever PID namespace it was in, so
a directory whose lock can be taken belongs to nobody.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery_archive.errors import disk_error

PREFIX = "celery-archive-"
IN_USE = ".in-use"
UNMARKED_AGE = 86400.0  # a directory without the marker (celery-archive 0.1 made those) is removed after a day


def sweep(root: Path, unmarked_age: float = UNMARKED_AGE) -> int:
    """Remove staging directories under ``root`` that no live process uses; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            marker = open(path / IN_USE, "rb")
        except FileNotFoundError:
            try:  # no marker: one made before markers, or its owner is removing it right now
                old = time.time() - entry.stat(follow_symlinks=False).st_mtime > unmarked_age
            except FileNotFoundError:
                continue  # gone meanwhile (another process's directory, removed as it ended)
            if old:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
            continue
        except OSError:
            continue  # not ours to judge (permissions): leave it
        with marker:
            try:
                fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


@contextmanager
def spool_dir(root: Path | None) -> Iterator[str]:
    """A private staging directory under ``root`` (the system's temp dir if None), marked in
    use while it lives and removed after; dead processes' directories there go first."""
    base = root if root is not None else Path(tempfile.gettempdir())
    try:
        base.mkdir(parents=True, exist_ok=True)
        sweep(base)
        tmp = tempfile.TemporaryDirectory(prefix=PREFIX, dir=base)
        # locked before it gets its name: no sweeper ever sees the marker unlocked
        marker = open(Path(tmp.name) / f"{IN_USE}.new", "wb")
        fcntl.flock(marker, fcntl.LOCK_EX)
        os.rename(marker.name, Path(tmp.name) / IN_USE)
    except OSError as exc:
        raise disk_error("creating a staging directory in", base, exc) from exc
    with marker, tmp as path:  # removed while still locked: no sweeper takes it from under its owner
        yield path
