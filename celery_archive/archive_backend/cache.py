"""Bounded in-process caches: an LRU kept under a byte budget, and a short-lived set of ids
the archive does not hold."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Values with a size; the least recently used are dropped once the sizes pass ``budget``
    (a value larger than the whole budget is handed back but not kept)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]
            if size > self.budget:
                return
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                _k, (_v, n) = self._items.popitem(last=False)
                self.used -= n

    def get_or_load(self, key: K, load: Callable[[], tuple[V, int]]) -> V:
        value = self.get(key)
        if value is None:
            value, size = load()
            self.put(key, value, size)
        return value

    def __len__(self) -> int:
        return len(self._items)


class MissCache:
    """Ids the archive did not hold when last asked, each forgotten after ``ttl`` seconds; at
    most ``limit`` are kept (the oldest go first)."""

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self.ttl, self.limit = ttl, limit
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if until < time.monotonic():
                del self._until[key]
                return False
            return True

    def add(self, key: str) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._until.pop(key, None)
            self._until[key] = time.monotonic() + self.ttl
            while len(self._until) > self.limit:
                self._until.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()
