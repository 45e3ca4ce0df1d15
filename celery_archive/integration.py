"""Celery integration: the ``celery_archive.archive`` task and :func:`setup_beat`.

::

    import celery_archive
    from celery.schedules import crontab

    celery_archive.setup_beat(app, sink="s3://bucket/prefix", schedule=crontab(hour=3, minute=30))

The task reads the app's own settings (result backend, table names, serializer, expiry) and an
optional config file, as ``celery-archive -A app run --config ...`` does. ``setup_beat`` puts
it in ``beat_schedule`` under the name ``celery.backend_cleanup``: beat schedules a user's entry
of that name instead of its own cleanup, so nothing deletes results before they are archived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK_NAME = "celery_archive.archive"
CLEANUP = "celery.backend_cleanup"


def archive_with(app: Any, **options: Any) -> dict[str, Any]:
    """One run with the app's settings, overridden by a ``config`` file and then ``options``
    (the command line's names: ``sink``, ``older_than="30d"``, ``format``, ``no_delete``, ...)."""
    from celery_archive.pipeline.run import run
    from celery_archive.settings import load_file, merged, run_config

    config = options.pop("config", None)
    data = load_file(Path(config)) if config else {}
    report: dict[str, Any] = run(run_config({**merged(app, data), **options}, data)).to_json()
    return report


def register(app: Any) -> Any:
    """The ``celery_archive.archive`` task on ``app`` (registered once)."""
    if TASK_NAME in app.tasks:
        return app.tasks[TASK_NAME]

    @app.task(name=TASK_NAME, bind=True)  # type: ignore[untyped-decorator]
    def archive(self: Any, **options: Any) -> dict[str, Any]:
        return archive_with(self.app, **options)

    return archive


def setup_beat(app: Any, sink: str, schedule: Any = None, **options: Any) -> None:
    """Schedule the archive task on ``app``'s beat in place of ``celery.backend_cleanup``.

    ``schedule`` is a crontab, a schedule or seconds (default: every day at 03:30);
    ``options`` are the task's (``older_than``, ``config``, ``format``, ...)."""
    if schedule is None:
        from celery.schedules import crontab

        schedule = crontab(hour=3, minute=30)
    register(app)
    entries = dict(app.conf.beat_schedule or {})
    entries[CLEANUP] = {"task": TASK_NAME, "schedule": schedule, "kwargs": {"sink": sink, **options}}
    app.conf.beat_schedule = entries
