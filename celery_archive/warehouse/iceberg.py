"""Apache Iceberg (optional, ``pip install 'celery-archive[iceberg]'``): each run's Parquet data
files are appended to an Iceberg table through pyiceberg, one snapshot per run, so engines
that speak Iceberg see the archive as a table. The data files stay where the archive keeps
them (``add_files``: nothing is copied or rewritten).

The catalog is pyiceberg's own configuration (``~/.pyiceberg.yaml`` or
``PYICEBERG_CATALOG__<NAME>__URI`` etc.): a SQL catalog, REST, Glue, Hive. Each snapshot carries
the run id; a run appends every committed run that is not in the table yet, so a failed
append is made good by the next run.
"""

from __future__ import annotations

from typing import Any

from celery_archive.archive import manifest as mf
from celery_archive.errors import ConfigError, SinkError
from celery_archive.schemas import arrow_schema
from celery_archive.sinks import Sink

RUN_PROPERTY = "celery-archive.run-id"


def _table(catalog_name: str, ident: str) -> Any:
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
        from pyiceberg.transforms import DayTransform
    except ImportError as exc:
        raise ConfigError("Iceberg needs pyiceberg: pip install 'celery-archive[iceberg]'") from exc
    if "." not in ident:
        raise ConfigError(f"--iceberg-table {ident!r}: use NAMESPACE.TABLE")
    catalog = load_catalog(catalog_name)
    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        pass
    else:
        if set(arrow_schema().names) - {f.name for f in table.schema().fields}:
            with table.update_schema() as update:  # a table made for an earlier record version
                update.union_by_name(arrow_schema())
            table = table.refresh()
        return table
    namespace = ident.rsplit(".", 1)[0]
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    table = catalog.create_table(ident, schema=arrow_schema())
    with table.update_spec() as spec:  # one partition a day, as the files are laid out
        spec.add_field("date_done", DayTransform(), "date_done_day")
    return table


def committed_in(table: Any) -> set[str]:
    return {s.summary[RUN_PROPERTY] for s in table.snapshots() if s.summary and s.summary.get(RUN_PROPERTY)}


def append_runs(sink: Sink, catalog_name: str, ident: str) -> list[str]:
    """Append the data files of every committed run not in the table yet; returns their run ids."""
    import logging

    from pyarrow.fs import S3FileSystem

    from celery_archive.warehouse.query import filesystem

    # pyiceberg warns for every column the archive writes no Parquet statistics for (the raw
    # bytes and texts, on purpose); the partition column (date_done) has them
    logging.getLogger("pyiceberg.io.pyarrow").setLevel(logging.ERROR)
    try:
        table = _table(catalog_name, ident)
        done = committed_in(table)
        fs, root = filesystem(sink)
        scheme = "s3://" if isinstance(fs, S3FileSystem) else ""
        added = []
        for run_id in mf.committed_runs(sink):
            if run_id in done:
                continue
            files = mf.load_manifest(sink, run_id).files
            if any(f.format is not mf.Format.PARQUET for f in files):
                raise ConfigError(f"run {run_id} wrote JSONL files; an Iceberg table holds Parquet: use --format parquet")
            if files:
                table.add_files([f"{scheme}{root}/{f.key}" for f in files], snapshot_properties={RUN_PROPERTY: run_id})
                table = table.refresh()
            added.append(run_id)
        return added
    except ConfigError:
        raise
    except Exception as exc:
        raise SinkError(f"appending to Iceberg table {ident} (catalog {catalog_name}) failed: {type(exc).__name__}: {exc}; "
                        "the archive itself is complete, and the next run appends what is missing") from exc
