"""Run ``celery-archive forget`` (or ``prune``) in this process and SIGKILL it at a step of the
rewrite: the test then checks the archive and lets a re-run (forget, prune or run's recovery)
finish the job.

    python forget_crash.py STAGE forget TASK_ID... --sink SINK --reason TEXT
    python forget_crash.py STAGE prune --sink SINK --older-than AGE
STAGE: after-plan | after-file | after-register | after-revision | after-index | mid-erase
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from celery_archive.archive import chain, rewrite
from celery_archive.archive import manifest as mf
from celery_archive.index import packs
from celery_archive.pipeline.lease import FencedSink


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def after(owner: Any, name: str, when: Any = None) -> None:
    """Kill the process right after ``owner.name`` returns (when ``when(*args)`` says so)."""
    real = getattr(owner, name)

    def wrapped(*a: Any, **kw: Any) -> Any:
        out = real(*a, **kw)
        if when is None or when(*a, **kw):
            die()
        return out

    setattr(owner, name, wrapped)


def main() -> None:
    stage, args = sys.argv[1], sys.argv[2:]
    if stage == "after-plan":
        after(rewrite, "record")
    elif stage == "after-file":
        after(rewrite, "_entry")
    elif stage == "after-register":  # the revision written and its hash chain position recorded
        after(chain, "register")
    elif stage == "after-revision":
        after(mf, "write_json", lambda _sink, key, _obj: key.startswith(mf.MANIFESTS))
    elif stage == "after-index":
        after(packs, "rewrite")
    elif stage == "mid-erase":
        after(FencedSink, "erase")
    from celery_archive.cli import main as cli_main

    cli_main([*args, "--lease-ttl", "1s"])


if __name__ == "__main__":
    main()
