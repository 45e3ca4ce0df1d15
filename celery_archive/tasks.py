"""Celery tasks for a run in shards (``celery-archive -A proj run --shards N --on-celery``).

A worker takes them by including this module, on the queue of its own they are sent to::

    celery -A proj worker -Q celery_archive -I celery_archive.tasks -c 4

``celery_archive.shard`` extracts, writes and verifies one shard's files; ``celery_archive.commit``
writes the run's one manifest once every shard verified, checking the run's lease token before
each put; ``celery_archive.purge`` (after the commit) verifies them again, indexes and purges
them. All three acknowledge late and are rejected (so redelivered) when their worker is lost: a
redelivered shard writes files of its own attempt, and the run commits those of the attempt
whose result it got (the others are removed), so nothing is archived twice; a redelivered commit
finds the run's commit and finishes it. The process that holds the run's lease (the
``celery-archive run`` command, or the ``celery_archive.archive`` task of
:func:`celery_archive.setup_beat`) renews it throughout and sends each step once the one before
has answered.

The tasks' own results are never taken by the run they belong to: they are written after the
run began, so their rows have ids above the largest id the run's SQL shards read at its start
and a date_done after its cutoff (which is fixed when it starts); the run forgets each of them
(``AsyncResult.forget``) as soon as it has read it.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from celery_archive.backends.sql import sqlite_arrow
from celery_archive.pipeline.shards import commit_shards, purge_shard, write_shard

sqlite_arrow.ALLOWED = False  # a worker's own result backend may hold locks on the same SQLite file (sqlite_arrow.py)

QUEUE = "celery_archive"
SHARD, COMMIT, PURGE = "celery_archive.shard", "celery_archive.commit", "celery_archive.purge"


@shared_task(name=SHARD, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def shard(job: dict[str, Any]) -> dict[str, Any]:
    return write_shard(job)


@shared_task(name=COMMIT, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def commit(job: dict[str, Any]) -> dict[str, Any]:
    return commit_shards(job)


@shared_task(name=PURGE, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def purge(job: dict[str, Any]) -> dict[str, Any]:
    return purge_shard(job)
