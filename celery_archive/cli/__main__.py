"""python -m celery_archive.cli: the celery-archive command."""

from celery_archive.cli import entry

entry()
