"""Where Celery's Redis backend puts result keys (its global_keyprefix layouts), and the exact
keys a purge deletes."""

from __future__ import annotations

import pyarrow as pa


def full_prefix(prefix: str) -> str:
    """Celery's global_keyprefix as Celery >= 5.5 applies it: ``_`` added unless it ends in ``:_-.``."""
    return prefix if not prefix or prefix[-1] in ":_-." else prefix + "_"


def key_prefixes(prefix: str) -> list[str]:
    """Where a global_keyprefix puts keys: Celery >= 5.5's layout, and Celery 5.3 and 5.4's,
    which always insert ``_`` (``myapp:`` -> ``myapp:_celery-task-meta-...``) where it differs.
    The two never match the same key (they differ in the character after the prefix)."""
    new, old = full_prefix(prefix), prefix + "_" if prefix else ""
    return [new] if old == new else [new, old]


def purged_keys(table: pa.Table) -> pa.Array:
    """The keys to delete: the exact key bytes (raw_key), or for records of record schema v1,
    which have none, the key's text (source_table)."""
    import pyarrow.compute as pc

    raw = table.column("raw_key")
    text = table.column("source_table").cast(pa.binary())
    return raw if raw.null_count == 0 else pc.coalesce(raw, text)
