"""An archive-aware Celery result backend: ``result_backend = "archive+<URL>"`` answers for
results that were archived and purged from the backend ``<URL>`` names (see backend.py)."""

from celery_archive.archive_backend.backend import ArchiveBackend, ArchiveMixin, DjangoArchiveBackend, archive_class
from celery_archive.archive_backend.decode import ArchivedContentRefused

__all__ = ["ArchiveBackend", "ArchiveMixin", "ArchivedContentRefused", "DjangoArchiveBackend", "archive_class"]
