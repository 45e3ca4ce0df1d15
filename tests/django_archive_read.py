"""django_results.py's ``get``, through ``result_backend = "archive+django-db"`` (CA_ARCHIVE_SINK
names the archive): python tests/django_archive_read.py get ID..."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import django_results  # sets Django up and makes the app

django_results.app.conf.update(result_backend=os.environ.get("CA_BACKEND", "archive+django-db"),
                               archive_sink=os.environ["CA_ARCHIVE_SINK"])
assert type(django_results.app.backend).__name__ == "ArchiveDatabaseBackend", type(django_results.app.backend)
django_results.get(sys.argv[2:])
