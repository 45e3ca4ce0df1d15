"""Every key shape of an archive, in one place. Keys are ``/``-separated, relative to the sink's root.

    data/date=YYYY-MM-DD/<run_id>-<seq>.<ext>      data files (Hive partitions; ext parquet, jsonl, jsonl.zst, jsonl.gz)
    outcomes/<run_id>.json                         committed (with the manifest) or abandoned: create-only,
                                                   so exactly one of the two ever exists
    manifests/<run_id>.json                        a run counts once this exists (a copy of its outcome's manifest)
    manifests/<run_id>@<rev>.json                  a later revision of it (forget, prune rewrote its files): the
                                                   highest one is the run's manifest; each names the sha256 of
                                                   the one it supersedes
    rewrites/<rewrite_id>.json                     a forget or prune under way: its plan, written before any
                                                   change (create-only), removed once it is done
    runs/<run_id>.json                             what the run verified and deleted (runs/<run_id>.kept.json: --no-delete)
    locks/lease-<version>.json                     who may change the archive now (create-only versions)
    locks/run.lock                                 celery-archive 0.1's lock: refused, never taken over
    index/log/run-<run_id>.parquet                 the restore index entries of one run's files
    index/log/packs-<gen>-<buckets>.ok             commits pack generation <gen>
    index/packs/<gen>/<bucket>.parquet             compacted index entries, by crc32(task_id) % buckets
    audit/<YYYYMMDDTHHMMSS.ffffffZ>-<hex>.json     one audit event each (archive/audit.py): create-only, never removed
    chain/<seq>.json                               the hash chain's positions (archive/chain.py): create-only, never removed
    verified/<sha256(key)[:32]>/<UTC time>.json     when verify last read a data file (archive/rotation.py): create-only
    keys/<data file key>.json                      an encrypted data file's wrapped data key (crypto/): never
                                                   Object-Locked; forget destroys it to erase every copy of the file

Run ids are ``YYYYMMDDTHHMMSSZ-uuuuuu`` and sort in the order the runs started.
"""

from __future__ import annotations

import datetime as dt

DATA, OUTCOMES, MANIFESTS, RUNS = "data/", "outcomes/", "manifests/", "runs/"
LEASE_PREFIX, LEGACY_LOCK = "locks/lease-", "locks/run.lock"
INDEX_LOG, INDEX_PACKS = "index/log/", "index/packs/"
REWRITES = "rewrites/"
AUDIT, CHAIN, VERIFIED = "audit/", "chain/", "verified/"
KEYS = "keys/"


def new_run_id(now: dt.datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-uuuuuu``: the suffix is the microsecond in hex, so run ids sort in the
    order the runs started even within one second ("the latest run" means the same everywhere);
    runs on one archive are serialized by its lease, and outcomes are create-only besides."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{now.microsecond:06x}"


def data_key(day: dt.date, run_id: str, seq: int, extension: str) -> str:
    return f"{DATA}date={day.isoformat()}/{run_id}-{seq:05d}.{extension}"


def run_id_of(data_key: str) -> str:
    """The run that wrote a data file, from its name ``<run_id>-<seq>.<ext>``."""
    name = data_key.rsplit("/", 1)[-1]
    return name.rsplit("-", 1)[0]


def day_of(data_key: str) -> str:
    """``YYYY-MM-DD`` of a data file, from its ``date=`` partition."""
    return data_key[len(DATA):].split("/", 1)[0].removeprefix("date=")


def outcome_key(run_id: str) -> str:
    return f"{OUTCOMES}{run_id}.json"


def manifest_key(run_id: str, revision: int = 1) -> str:
    """``manifests/<run_id>.json``, or ``manifests/<run_id>@<revision>.json`` for a later revision."""
    return f"{MANIFESTS}{run_id}.json" if revision <= 1 else f"{MANIFESTS}{run_id}@{revision:06d}.json"


def manifest_name(key: str) -> tuple[str, int] | None:
    """(run id, revision) of a key under ``manifests/``, or None for anything else."""
    name = key[len(MANIFESTS):]
    if not key.startswith(MANIFESTS) or not name.endswith(".json") or "/" in name:
        return None
    run_id, _, rev = name[: -len(".json")].partition("@")
    return (run_id, int(rev)) if rev.isdigit() else (run_id, 1) if not rev else None


def rewrite_key(rewrite_id: str) -> str:
    return f"{REWRITES}{rewrite_id}.json"


def report_key(run_id: str, purged: bool = True) -> str:
    """``runs/<id>.json`` once purged; ``runs/<id>.kept.json`` for a --no-delete run (both write-once)."""
    return f"{RUNS}{run_id}.json" if purged else f"{RUNS}{run_id}.kept.json"


def lease_key(version: int) -> str:
    return f"{LEASE_PREFIX}{version:012d}.json"


def delta_key(run_id: str, part: str | None = None) -> str:
    """A run's log file of the restore index; a run finished in parts (shards) has one a part."""
    return f"{INDEX_LOG}run-{run_id}{'' if part is None else '.' + part}.parquet"


def run_of_delta(key: str) -> str:
    """The run whose log file ``key`` is (``delta_key``'s inverse)."""
    return key.rsplit("/", 1)[-1].removeprefix("run-").removesuffix(".parquet").split(".", 1)[0]


def pack_marker_key(gen: int, buckets: int) -> str:
    return f"{INDEX_LOG}packs-{gen:06d}-{buckets}.ok"


def pack_key(gen: int, buckets: int, bucket: int) -> str:
    return f"{INDEX_PACKS}{gen:06d}/{bucket:0{len(f'{buckets - 1:x}')}x}.parquet"


def audit_key(at: dt.datetime, suffix: str) -> str:
    """``audit/<UTC time to the microsecond>-<suffix>.json``: keys sort in the order events happened."""
    return f"{AUDIT}{at.astimezone(dt.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}-{suffix}.json"


def chain_key(seq: int) -> str:
    return f"{CHAIN}{seq:012d}.json"
