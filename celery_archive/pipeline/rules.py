"""Retention rules: which results a run archives, deletes without archiving, or keeps.

A policy is a default age and an ordered list of rules, each matched by task name glob, status
and stored size, with an age and an action (``archive`` then delete, ``delete`` without an
archive, ``keep``: never touched). The first matching rule wins; a result no rule matches gets
the default age and ``archive``. The legal hold (task ids, task name globs) wins over every
rule: a held result is never archived-and-deleted nor deleted. Classification runs on whole
record batches in Arrow (no Python object per row).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from celery_archive.errors import ConfigError

ACTIONS = ("archive", "delete", "keep")
DEFAULT, HOLD = "default", "hold"


@dataclass(frozen=True)
class Rule:
    name: str
    older_than: dt.timedelta | None = None  # None: the policy's default age
    action: str = "archive"
    match: str = "*"  # task name glob
    status: tuple[str, ...] = ()  # any status when empty
    larger_than: int | None = None  # stored bytes
    smaller_than: int | None = None


@dataclass(frozen=True)
class Hold:
    task_ids: frozenset[str] = frozenset()
    names: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.task_ids or self.names)


@dataclass(frozen=True)
class Policy:
    default_age: dt.timedelta
    rules: tuple[Rule, ...] = ()
    hold: Hold = field(default_factory=Hold)

    def widest_age(self) -> dt.timedelta:
        """The youngest age any rule acts at: what a run must read."""
        ages = [self.default_age] + [r.older_than or self.default_age for r in self.rules if r.action != "keep"]
        return min(ages)

    def labels(self) -> list[str]:
        return [*(r.name for r in self.rules), DEFAULT, HOLD]

    def classify(self, table: pa.Table, now: dt.datetime, expiring: dt.timedelta | None = None) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(rule label, action, due) per record: due when it is older than its rule's age, or
        (Redis, ``expiring``) when its key expires sooner than that margin. ``now`` is naive UTC,
        as the records' dates are compared."""
        n = table.num_rows
        names = pc.fill_null(table["name"], "")
        status = pc.fill_null(table["status"], "")
        raw = pc.coalesce(table["raw_value"], table["raw_result"]) if "raw_value" in table.column_names else table["raw_result"]
        size = pc.fill_null(pc.binary_length(raw), 0)
        chosen = pa.repeat(pa.scalar(len(self.rules), pa.int32()), n)  # index of the default
        unassigned = pa.repeat(pa.scalar(True), n)
        for i, r in enumerate(self.rules):
            m = glob_mask(names, [r.match])
            if r.status:
                m = pc.and_(m, pc.is_in(status, value_set=pa.array(r.status)))
            if r.larger_than is not None:
                m = pc.and_(m, pc.greater(size, r.larger_than))
            if r.smaller_than is not None:
                m = pc.and_(m, pc.less(size, r.smaller_than))
            hit = pc.and_(unassigned, m)
            chosen = pc.if_else(hit, i, chosen)
            unassigned = pc.and_(unassigned, pc.invert(hit))
        if self.hold:
            held = pc.or_(pc.is_in(table["task_id"], value_set=pa.array(sorted(self.hold.task_ids), pa.string())),
                          glob_mask(names, list(self.hold.names)))
            chosen = pc.if_else(held, len(self.rules) + 1, chosen)
        labels = pa.array(self.labels())
        actions = pa.array([r.action for r in self.rules] + ["archive", "keep"])
        ages = [r.older_than or self.default_age for r in self.rules] + [self.default_age, self.default_age]
        cutoffs = pa.array([now - a for a in ages], pa.timestamp("us"))
        dates = table["date_done"].cast(pa.timestamp("us"))  # UTC wall time, as ``now``
        due = pc.fill_null(pc.less(dates, pc.take(cutoffs, chosen)), False)
        if expiring is not None:  # archived before Redis expires it, whatever its rule's age
            ttl = table["ttl_ms"]
            soon = pc.and_(pc.greater_equal(ttl, 0), pc.less(ttl, int(expiring.total_seconds() * 1000)))
            due = pc.or_(due, pc.fill_null(soon, False))
        return pc.take(labels, chosen), pc.take(actions, chosen), due


def glob_mask(values: Any, patterns: list[str]) -> Any:
    """Which values (task names) match any of the globs, as fnmatch matches them (case
    sensitive); a null matches none. Each distinct value is matched once."""
    hits = [v for v in pc.unique(values).to_pylist() if v is not None and any(fnmatchcase(v, p) for p in patterns)]
    return pc.is_in(values, value_set=pa.array(hits, pa.string()))


def policy_from(default_age: dt.timedelta, rules: list[dict[str, Any]], hold: dict[str, Any]) -> Policy:
    """A policy from a config file's ``[[rules]]`` and ``[hold]`` tables, checked."""
    from celery_archive.config import parse_duration, parse_size

    out = []
    for i, raw in enumerate(rules, 1):
        unknown = set(raw) - {"name", "match", "status", "older_than", "action", "larger_than", "smaller_than"}
        if unknown:
            raise ConfigError(f"rule {i}: unknown key(s) {', '.join(sorted(unknown))}: use match, status, larger_than, "
                              "smaller_than, older_than, action, name")
        action = raw.get("action", "archive")
        if action not in ACTIONS:
            raise ConfigError(f"rule {i}: action {action!r}: use archive, delete or keep")
        status = raw.get("status", [])
        if isinstance(status, str):
            status = [status]
        name = str(raw.get("name") or f"rule{i}:{raw.get('match', '*')}")
        if name in (DEFAULT, HOLD):
            raise ConfigError(f"rule {i}: the name {name!r} is reserved")
        out.append(Rule(name=name, match=str(raw.get("match", "*")), status=tuple(str(s) for s in status),
                        older_than=parse_duration(raw["older_than"], f"rule {name!r} older_than") if "older_than" in raw else None, action=action,
                        larger_than=parse_size(str(raw["larger_than"])) if "larger_than" in raw else None,
                        smaller_than=parse_size(str(raw["smaller_than"])) if "smaller_than" in raw else None))
    if len({r.name for r in out}) != len(out):
        raise ConfigError("two rules have the same name: give each a distinct name")
    unknown = set(hold) - {"task_ids", "names"}
    if unknown:
        raise ConfigError(f"[hold]: unknown key(s) {', '.join(sorted(unknown))}: use task_ids and names")
    return Policy(default_age, tuple(out), Hold(frozenset(map(str, hold.get("task_ids", []))), tuple(map(str, hold.get("names", [])))))


class Applied:
    """A policy applied during one run: each extracted batch is cut down to what the run
    archives (its ``rule`` column filled in); what ``delete`` rules take is spooled to an Arrow
    file (memory stays bounded) and purged after the run's own purge; counts per rule."""

    def __init__(self, policy: Policy, now: dt.datetime, spool: Path | None, keys: tuple[str, ...],
                 expiring: dt.timedelta | None = None) -> None:
        self.policy, self.now, self._keys, self._expiring = policy, now, ("kind", *keys), expiring
        self.archived: Counter[str] = Counter()
        self.deleted: Counter[str] = Counter()  # due under a delete rule
        self.kept: Counter[str] = Counter()  # due, but keep or held
        self.not_due: Counter[str] = Counter()
        self._path = spool / "rule-deletions.arrow" if spool else None  # None: count only (rules check)
        self._writer: Any = None

    def apply(self, table: pa.Table) -> pa.Table:
        labels, actions, due = self.policy.classify(table, self.now, self._expiring)
        for name, counter in (("archive", self.archived), ("delete", self.deleted), ("keep", self.kept)):
            _count(counter, labels.filter(pc.and_(due, pc.equal(actions, name))))
        _count(self.not_due, labels.filter(pc.invert(due)))
        doomed = pc.and_(due, pc.equal(actions, "delete"))
        if self._path is not None and pc.any(doomed).as_py():
            part = table.filter(doomed).select(list(self._keys))
            if self._writer is None:
                import pyarrow.ipc as ipc

                self._writer = ipc.new_file(self._path, part.schema)
            self._writer.write_table(part)
        keep = pc.and_(due, pc.equal(actions, "archive"))
        out = table.filter(keep)
        return out.set_column(out.schema.get_field_index("rule"), "rule", labels.filter(keep))

    def deletions(self, batch_rows: int) -> Iterator[tuple[str, pa.Table]]:
        """(kind, keys) chunks of what delete rules took, read back from the spool."""
        if self._writer is None:
            return
        self._writer.close()
        import pyarrow.ipc as ipc

        with ipc.open_file(self._path) as f:
            for i in range(f.num_record_batches):
                chunk = pa.Table.from_batches([f.get_batch(i)])
                for kind in ("task", "group"):
                    part = chunk.filter(pc.equal(chunk["kind"], kind))
                    for j in range(0, part.num_rows, batch_rows):
                        yield kind, part.slice(j, batch_rows)

    def counts(self) -> dict[str, dict[str, int]]:
        return {label: {"archived": self.archived[label], "deleted": self.deleted[label], "kept": self.kept[label],
                        "not_due": self.not_due[label]}
                for label in self.policy.labels() if self.archived[label] or self.deleted[label] or self.kept[label] or self.not_due[label]}


def _count(counter: Counter[str], labels: Any) -> None:
    for value, n in zip(*pc.value_counts(labels).flatten()):
        counter[value.as_py()] += n.as_py()
