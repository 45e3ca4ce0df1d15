"""Celery integration: the ``celery_archive.archive`` task and :func:`setup_beat`.

::

    import celery_archive
    from celery.schedules import crontab

    celery_archive.setup_beat(app, sink="s3://bucket/prefix", schedule=crontab(hour=3, minute=30),
                              verify_schedule=crontab(hour=5, minute=0), verify_options={"max_duration": "1h"})

The task reads the app's own settings (result backend, table names, serializer, expiry) and an
optional config file, as ``celery-archive -A app run --config ...`` does. ``setup_beat`` puts
it in ``beat_schedule`` under the name ``celery.backend_cleanup``: beat schedules a user's entry
of that name instead of its own cleanup, so nothing deletes results before they are archived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK_NAME = "celery_archive.archive"
VERIFY_TASK = "celery_archive.verify"
CLEANUP = "celery.backend_cleanup"
VERIFY_ENTRY = "celery_archive.verify"


def archive_with(app: Any, **options: Any) -> dict[str, Any]:
    """One run with the app's settings, overridden by a ``config`` file and then ``options``
    (the command line's names: ``sink``, ``older_than="30d"``, ``format``, ``no_delete``, ...)."""
    from celery_archive.pipeline.run import run
    from celery_archive.settings import load_file, merged, run_config

    config = options.pop("config", None)
    data = load_file(Path(config)) if config else {}
    cfg = run_config({**merged(app, data), **options}, data)
    runner = None
    if cfg.on_celery:  # the shards go to the workers of cfg.queue; this task holds the lease and commits
        from celery_archive.pipeline.sharded import CeleryRunner

        runner = CeleryRunner(app, cfg.queue)
    report: dict[str, Any] = run(cfg, runner=runner).to_json()
    return report


def verify_with(sink: str, subset: str | None = None, max_duration: str | None = None) -> dict[str, Any]:
    """One ``verify`` of ``sink`` (``subset="3/7"``, ``max_duration="1h"``, as on the command
    line); raises VerifyError (the task fails) when the archive does not verify."""
    from celery_archive.archive.catalog import verify_archive
    from celery_archive.archive.rotation import Subset
    from celery_archive.config import parse_duration
    from celery_archive.errors import VerifyError

    report = verify_archive(sink, subset=Subset.parse(subset) if subset else None,
                            max_duration=parse_duration(max_duration, "max_duration") if max_duration else None)
    if not report.ok:
        exc = VerifyError(f"{sink} failed verification: " + "; ".join(report.problems[:5]))
        exc.problems = report.problems  # type: ignore[attr-defined]
        raise exc
    return report.to_json()


def register(app: Any) -> Any:
    """The ``celery_archive.archive`` and ``celery_archive.verify`` tasks on ``app`` (registered once)."""
    if TASK_NAME in app.tasks:
        return app.tasks[TASK_NAME]

    @app.task(name=TASK_NAME, bind=True)  # type: ignore[untyped-decorator]
    def archive(self: Any, **options: Any) -> dict[str, Any]:
        return archive_with(self.app, **options)

    @app.task(name=VERIFY_TASK)  # type: ignore[untyped-decorator]
    def verify(sink: str, subset: str | None = None, max_duration: str | None = None) -> dict[str, Any]:
        return verify_with(sink, subset, max_duration)

    return archive


def setup_beat(app: Any, sink: str, schedule: Any = None, verify_schedule: Any = None,
               verify_options: dict[str, Any] | None = None, **options: Any) -> None:
    """Schedule the archive task on ``app``'s beat in place of ``celery.backend_cleanup``.

    ``schedule`` is a crontab, a schedule or seconds (default: every day at 03:30);
    ``options`` are the task's (``older_than``, ``config``, ``format``, ``shards=16``: in local
    processes of the worker that runs it, or with ``on_celery=True`` as tasks on the workers of
    ``queue``, default celery_archive, which this task then waits for: give it a slot of its own).
    ``verify_schedule`` (the same kinds) also schedules ``celery_archive.verify`` of ``sink``,
    with ``verify_options`` (``max_duration="1h"``: the least recently verified files first,
    so successive verifies rotate through the archive; or ``subset="1/7"``)."""
    if schedule is None:
        from celery.schedules import crontab

        schedule = crontab(hour=3, minute=30)
    register(app)
    entries = dict(app.conf.beat_schedule or {})
    entries[CLEANUP] = {"task": TASK_NAME, "schedule": schedule, "kwargs": {"sink": sink, **options}}
    if verify_schedule is not None:
        entries[VERIFY_ENTRY] = {"task": VERIFY_TASK, "schedule": verify_schedule, "kwargs": {"sink": sink, **(verify_options or {})}}
    app.conf.beat_schedule = entries
