"""django-celery-results' side of bench_sql.py, in a Django process of its own on the database a
SQLAlchemy URL names:

    python benchmarks/django_side.py write URL     migrate, then 100 results by Celery's django-db backend
    python benchmarks/django_side.py cleanup URL   TaskResult.objects.delete_expired(30 days), as a cron job runs it
"""

from __future__ import annotations

import datetime as dt
import sys

import sqlalchemy as sa


def setup(url: str) -> None:
    import django
    from django.conf import settings

    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": u.database}
    else:
        engine = "postgresql" if u.get_backend_name() == "postgresql" else "mysql"
        if engine == "mysql":
            import pymysql

            pymysql.install_as_MySQLdb()
        db = {"ENGINE": f"django.db.backends.{engine}", "NAME": u.database, "USER": u.username or "",
              "PASSWORD": u.password or "", "HOST": u.host or "", "PORT": str(u.port or "")}
    settings.configure(INSTALLED_APPS=["django_celery_results"], DATABASES={"default": db}, USE_TZ=True, TIME_ZONE="UTC",
                       DEFAULT_AUTO_FIELD="django.db.models.AutoField")
    django.setup()


def main() -> None:
    op, url = sys.argv[1], sys.argv[2]
    setup(url)
    if op == "write":
        from celery import Celery
        from common import write_samples
        from django.core.management import call_command

        call_command("migrate", "django_celery_results", verbosity=0)
        app = Celery("bench", set_as_current=False)
        app.conf.update(result_backend="django-db", result_extended=True)
        write_samples(app)
    elif op == "cleanup":
        from django_celery_results.models import TaskResult

        TaskResult.objects.delete_expired(dt.timedelta(days=30))
    else:
        raise SystemExit(f"unknown operation {op!r}: write or cleanup")


if __name__ == "__main__":
    main()
