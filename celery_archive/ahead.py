"""Overlap waiting with working: produce the next item on a thread while the caller works on
this one (drivers release the GIL while they wait on a server or a disk)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterator[T], name: str = "celery-archive-ahead") -> Iterator[T]:
    """``items``, each made on a thread while the caller works on the one before."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        future = pool.submit(next, items, _DONE)
        while (item := future.result()) is not _DONE:
            future = pool.submit(next, items, _DONE)
            yield item  # type: ignore[misc]
