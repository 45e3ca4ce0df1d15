"""python -m celery_archive.cli: the celery-archive command."""

from celery_archive.cli import entry

if __name__ == "__main__":
    entry()
