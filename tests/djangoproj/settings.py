"""A minimal Django project with django-celery-results, on the database that CA_DJANGO_DB names
(a SQLAlchemy URL: sqlite:///path, postgresql+psycopg://user@host:port/db or
mysql+pymysql://user@host:port/db)."""

from __future__ import annotations

import os

import sqlalchemy as sa

_url = sa.make_url(os.environ["CA_DJANGO_DB"])
if _url.get_backend_name() == "sqlite":
    _db = {"ENGINE": "django.db.backends.sqlite3", "NAME": _url.database}
else:
    _engine = "postgresql" if _url.get_backend_name() == "postgresql" else "mysql"
    if _engine == "mysql":  # Django's MySQL backend on PyMySQL
        import pymysql

        pymysql.install_as_MySQLdb()
    _db = {"ENGINE": f"django.db.backends.{_engine}", "NAME": _url.database, "USER": _url.username or "",
           "PASSWORD": _url.password or "", "HOST": _url.host or "", "PORT": str(_url.port or "")}

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["django_celery_results"]
DATABASES = {"default": _db}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
