"""Where a command's settings come from, strongest first: command-line flags, environment
variables (``CELERY_ARCHIVE_<KEY>``), the TOML config file (``--config``), the Celery app
(``-A module:attr``), then built-in defaults.

The file and the app become click's ``default_map``, which click consults after the command
line and the environment; rules and the legal hold come from the file only.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from celery_archive.config import format_duration
from celery_archive.errors import ConfigError

ENV_PREFIX = "CELERY_ARCHIVE_"
FILE_KEYS = {
    "source", "sink", "older_than", "format", "compression", "serializer", "task_table", "group_table", "batch_size",
    "max_file_size", "key_prefix", "expiring_within", "result_expires", "master_name", "spool_dir", "delete",
    "max_rate", "max_runtime", "metrics_file", "iceberg_table", "iceberg_catalog", "lease_ttl", "rules", "hold", "timezone",
    "celery_version", "commit_every",
}


def envvar(key: str) -> str:
    return ENV_PREFIX + key.upper()


def load_file(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = set(data) - FILE_KEYS
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FILE_KEYS))}")
    if "rules" in data and not isinstance(data["rules"], list):
        raise ConfigError(f"config file {path}: rules must be [[rules]] tables")
    return data


def load_app(spec: str) -> Any:
    """The Celery app named like Celery's own ``-A``: ``proj``, ``proj.celery``, ``proj.celery:app``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `celery -A` does
    from celery.app.utils import find_app

    try:
        return find_app(spec)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load the Celery app {spec!r} (-A): {type(exc).__name__}: {exc}") from exc


def from_app(app: Any) -> dict[str, Any]:
    """Settings a Celery app already has: its result backend, table names, serializer, expiry,
    and its zone as Celery resolves it (``timezone``, else UTC with ``enable_utc``, else the
    machine's local zone): app.now(), which Celery >= 5.5 stores as date_done, is in it."""
    conf = app.conf
    out: dict[str, Any] = {}
    backend = conf.result_backend
    if isinstance(backend, str) and backend:
        out["source"] = _django_url() if backend in ("django-db", "django_celery_results.backends:DatabaseBackend") else backend
    expires = conf.result_expires
    if expires:
        td = expires if isinstance(expires, dt.timedelta) else dt.timedelta(seconds=float(expires))
        out["result_expires"] = out["older_than"] = format_duration(td)
    names, schemas = conf.database_table_names or {}, conf.database_table_schemas or {}
    for kind in ("task", "group"):
        if names.get(kind) or schemas.get(kind):
            name = names.get(kind) or ("celery_taskmeta" if kind == "task" else "celery_tasksetmeta")
            out[f"{kind}_table"] = f"{schemas[kind]}.{name}" if schemas.get(kind) else name
    options = conf.result_backend_transport_options or {}
    if options.get("global_keyprefix"):
        out["key_prefix"] = options["global_keyprefix"]
    if options.get("master_name"):
        out["master_name"] = options["master_name"]
    if conf.result_serializer:
        out["serializer"] = conf.result_serializer
    out["timezone"] = str(conf.timezone) if conf.timezone else "UTC" if conf.enable_utc else "local"
    return out


def _django_url() -> str:
    """``django+<SQLAlchemy URL>`` of the Django project's default database."""
    import sqlalchemy as sa

    try:
        from django.conf import settings  # type: ignore[import-untyped]

        db = settings.DATABASES["default"]
    except Exception as exc:
        raise ConfigError(f"the app uses django-db, but its Django settings cannot be read: {exc}") from exc
    engine = db.get("ENGINE", "").rsplit(".", 1)[-1]
    drivers = {"postgresql": "postgresql+psycopg", "postgresql_psycopg2": "postgresql+psycopg", "mysql": "mysql+pymysql",
               "sqlite3": "sqlite"}
    if engine not in drivers:
        raise ConfigError(f"Django database engine {db.get('ENGINE')!r} is not supported: use PostgreSQL, MySQL/MariaDB or SQLite")
    if engine == "sqlite3":
        return f"django+sqlite:///{Path(str(db['NAME'])).absolute()}"
    url = sa.URL.create(drivers[engine], username=db.get("USER") or None, password=db.get("PASSWORD") or None,
                        host=db.get("HOST") or None, port=int(db["PORT"]) if db.get("PORT") else None, database=db.get("NAME"))
    return "django+" + url.render_as_string(hide_password=False)


def merged(app: Any | None, data: dict[str, Any]) -> dict[str, Any]:
    """Settings from the app, overridden by the config file's (its rules and hold aside), in the
    command line's names (``delete = false`` is ``no_delete``)."""
    out = from_app(app) if app is not None else {}
    out.update({k: v for k, v in data.items() if k not in ("rules", "hold", "delete")})
    if data.get("delete") is False:
        out["no_delete"] = True
    return out


def default_map(app_spec: str | None, config: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(click default_map for the flags, the whole file) from the app and the config file."""
    data = load_file(config) if config else {}
    values = merged(load_app(app_spec) if app_spec else None, data)
    return {k: _flag_value(v) for k, v in values.items()}, data


def _flag_value(v: Any) -> Any:
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def run_config(values: dict[str, Any], file_data: dict[str, Any] | None = None, need_sink: bool = True,
               expires_is_age: bool = False) -> Any:
    """A RunConfig from settings in their command-line forms (``older_than="30d"``, ...), with the
    file's rules and hold. Names what is missing and where it can come from. With
    ``expires_is_age`` (stats), no --older-than means --result-expires, as for Celery's own
    cleanup (result_expires, one day by default)."""
    from celery_archive.config import RunConfig, parse_duration, parse_size
    from celery_archive.pipeline.rules import policy_from

    v = {k: val for k, val in values.items() if val is not None}
    if not need_sink:
        v.setdefault("sink", "")
    if expires_is_age:
        v.setdefault("older_than", v.get("result_expires", "1d"))
    for key in ("source", "sink", "older_than"):
        if key not in v:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"no {flag}: give {flag}, set {envvar(key)}, put {key} = ... in the --config file"
                              + (", or use -A with an app that has result_backend" if key == "source" else "")
                              + (" (or -A with an app that has result_expires)" if key == "older_than" else ""))
    older_than = parse_duration(str(v["older_than"]), "--older-than")
    data = file_data or {}
    policy = policy_from(older_than, data.get("rules", []), data.get("hold", {})) if data.get("rules") or data.get("hold") else None
    task_schema, _, task_name = str(v.get("task_table", "celery_taskmeta")).rpartition(".")
    group_schema, _, group_name = str(v.get("group_table", "celery_tasksetmeta")).rpartition(".")
    return RunConfig(
        source=str(v["source"]), sink=str(v["sink"]), older_than=older_than, format=str(v.get("format", "parquet")),
        compression=None if v.get("compression") in (None, "") else str(v["compression"]),
        serializer=str(v.get("serializer", "json")), task_table=task_name, group_table=group_name,
        task_schema=task_schema or None, group_schema=group_schema or None, batch_size=int(v.get("batch_size", 10_000)),
        max_file_bytes=parse_size(str(v.get("max_file_size", "128MiB"))), delete=not v.get("no_delete", False),
        dry_run=bool(v.get("dry_run", False)), spool_dir=Path(v["spool_dir"]) if v.get("spool_dir") else None,
        key_prefix=str(v.get("key_prefix", "")),
        expiring_within=parse_duration(str(v["expiring_within"]), "--expiring-within") if v.get("expiring_within") else None,
        result_expires=parse_duration(str(v.get("result_expires", "1d")), "--result-expires"), master_name=v.get("master_name"),
        policy=policy, max_rate=float(v["max_rate"]) if v.get("max_rate") else None,
        max_runtime=parse_duration(str(v["max_runtime"]), "--max-runtime") if v.get("max_runtime") else None,
        metrics_file=Path(v["metrics_file"]) if v.get("metrics_file") else None,
        iceberg_table=v.get("iceberg_table") or None, iceberg_catalog=str(v.get("iceberg_catalog") or "default"),
        lease_ttl=_lease_ttl(str(v.get("lease_ttl") or "60s")),
        timezone=str(v["timezone"]) if v.get("timezone") else None,
        celery_version=str(v["celery_version"]) if v.get("celery_version") else None,
        commit_every=int(v.get("commit_every", RunConfig.commit_every)),
        shards=int(v.get("shards") or 1), on_celery=bool(v.get("on_celery", False)), queue=str(v.get("queue") or "celery_archive"),
    )


def _lease_ttl(text: str) -> float:
    from celery_archive.config import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ConfigError as exc:
        raise ConfigError(f"--lease-ttl: {exc}") from exc
