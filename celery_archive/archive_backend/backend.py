"""``result_backend = "archive+<URL>"``: the backend ``<URL>`` names, with the archive as a
second tier behind it. Celery resolves ``archive`` through the ``celery.result_backends``
entry point to :class:`ArchiveBackend`; calling it builds (once per wrapped class) a subclass
of the wrapped backend with :class:`ArchiveMixin` in front, so every call reaches the wrapped
backend's own code first and ``isinstance(app.backend, RedisBackend)`` stays true.

Only reads of an id the wrapped backend has no record of reach the archive: a task's meta
(``AsyncResult.state/.get()``, ``celery result``, Flower), ``get_many`` (a group joined
natively), ``restore_group`` (``GroupResult.restore``) and ``task_result_exists``
(``AsyncResult.exists()``). Writes, forget, revokes and chords run under a live-only guard,
so nothing they read internally (``_store_result`` reads the current meta first) is ever
looked up in the archive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend

from .decode import ArchivedContentRefused, group_meta, task_meta
from .putback import put_back
from .settings import ArchiveSettings
from .tier import ArchiveTier

LIVE_ONLY = ("_store_result", "_forget", "forget", "_save_group", "_delete_group", "on_chord_part_return", "apply_chord",
             "_apply_chord_incr", "set_chord_size", "add_to_chord", "cleanup", "mark_as_revoked")
"""Methods that run with the archive out of the picture (writes and chord bookkeeping)."""

_guard = threading.local()


@contextmanager
def live_only() -> Iterator[None]:
    _guard.depth = getattr(_guard, "depth", 0) + 1
    try:
        yield
    finally:
        _guard.depth -= 1


def _live() -> bool:
    return bool(getattr(_guard, "depth", 0))


class ArchiveMixin:
    """Put in front of a Celery backend class; ``self.archive`` is the archive tier."""

    archive: ArchiveTier

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.archive_settings = ArchiveSettings.from_conf(self.app.conf)  # type: ignore[attr-defined]
        self.archive = ArchiveTier(self.archive_settings)

    def _no_record(self, meta: dict[str, Any]) -> bool:
        """PENDING with nothing stored: what the wrapped backend answers for an id it never held."""
        if meta.get("status") != states.PENDING or meta.get("result") is not None:
            return False
        if isinstance(self, KeyValueStoreBackend):
            return "task_id" not in meta  # a stored meta always carries its task_id
        return meta.get("date_done") is None and meta.get("traceback") is None

    def archived_meta(self, task_id: str) -> dict[str, Any] | None:
        """The archived meta of ``task_id`` (None when the archive has none), put back into the
        live backend when ``archive_restore_on_read`` is on."""
        rec = self.archive.record(task_id, "task")
        if rec is None:
            return None
        try:
            meta = task_meta(self, rec)
        except ArchivedContentRefused:
            raise  # the app asked for this result and may not read it: say so
        except Exception as exc:  # noqa: BLE001 - a record that will not decode: the live answer stands
            self._undecodable(rec, exc)
            return None
        if self.archive_settings.restore_on_read:
            self._put_back(rec, dict(meta))
        return meta

    def _undecodable(self, rec: dict[str, Any], exc: Exception) -> None:
        self.archive.warn_once(f"decode:{rec.get('kind')}:{rec.get('task_id')}",
                               f"{rec.get('kind')} {rec.get('task_id')} is in the archive but its stored bytes do not decode "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the live backend's "
                               "answer stands: `celery-archive restore ID` shows the archived record")

    def _put_back(self, rec: dict[str, Any], meta: dict[str, Any]) -> None:
        try:
            with live_only():
                put_back(self, rec, meta)
        except Exception as exc:  # noqa: BLE001 - the answer from the archive stands
            self.archive.warn_once(f"putback:{type(exc).__name__}", f"archive_restore_on_read could not put {rec['kind']} "
                                   f"{rec['task_id']} back into the live backend ({type(exc).__name__}); it was answered "
                                   "from the archive and will be again")

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = super()._get_task_meta_for(task_id)  # type: ignore[misc]
        if meta.get("status") != states.PENDING or _live() or not self._no_record(meta):  # a live result: nothing more
            return meta
        found = self.archived_meta(str(task_id))
        return meta if found is None else found

    def task_result_exists(self, task_id: str) -> bool:
        if super().task_result_exists(task_id):  # type: ignore[misc]
            return True
        return bool(self.archive.entries(str(task_id), "task"))

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        meta: dict[str, Any] | None = super()._restore_group(group_id)  # type: ignore[misc]
        if _live() or (meta is not None and meta.get("result") is not None):
            return meta  # (django-celery-results answers an unknown group with an empty one)
        rec = self.archive.record(str(group_id), "group")
        if rec is None:
            return meta
        try:
            found = group_meta(self, rec)
        except ArchivedContentRefused:
            raise
        except Exception as exc:  # noqa: BLE001
            self._undecodable(rec, exc)
            return meta
        if self.archive_settings.restore_on_read:
            self._put_back(rec, found)
        return found

    def _mget_to_results(self, values: Any, keys: Any, READY_STATES: Any = states.READY_STATES) -> dict[Any, Any]:
        out: dict[Any, Any] = super()._mget_to_results(values, keys, READY_STATES)  # type: ignore[misc]
        if _live():
            return out
        if hasattr(values, "items"):
            absent = [_text(self._strip_prefix(k)) for k, v in values.items() if v is None]  # type: ignore[attr-defined]
        else:
            absent = [_text(keys[i]) for i, v in enumerate(values) if v is None]
        for task_id in absent:
            meta = self.archived_meta(task_id)
            if meta is not None and meta["status"] in READY_STATES:
                out[task_id] = meta
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _live_method(name: str, base: type) -> Callable[..., Any]:
    inner = getattr(base, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        with live_only():
            return inner(self, *args, **kwargs)

    method.__name__ = name
    return method


_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def archive_class(wrapped: type) -> type:
    """The archive-aware subclass of backend class ``wrapped`` (made once)."""
    with _classes_lock:
        if wrapped not in _classes:
            body: dict[str, Any] = {"__module__": __name__, "__doc__": f"{wrapped.__name__} with the archive behind it."}
            body.update({n: _live_method(n, wrapped) for n in LIVE_ONLY if hasattr(wrapped, n)})
            _classes[wrapped] = type(f"Archive{wrapped.__name__}", (ArchiveMixin, wrapped), body)
        return _classes[wrapped]


def resolve(url: str | None, app: Any) -> tuple[type, str | None]:
    """The backend class ``url`` (what follows ``archive+``) names, and the URL it is given."""
    from celery.app.backends import by_url

    from celery_archive.errors import ConfigError

    if not url:
        raise ConfigError('result_backend "archive+..." names no backend to wrap: use archive+redis://..., '
                          "archive+db+postgresql://..., archive+django-db:// ...")
    if url.split("://", 1)[0].split("+", 1)[0] == "archive":
        raise ConfigError("result_backend wraps the archive backend in itself: use archive+<backend URL> once")
    cls, inner = by_url(url, app.loader if app is not None else None)
    return cls, inner


class _Dispatch(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        app = kwargs.get("app", args[0] if args else None)
        url = getattr(cls, "wrapped_url", None) or kwargs.pop("url", None)
        kwargs.pop("url", None)
        wrapped, inner = resolve(url, app)
        return archive_class(wrapped)(*args, url=inner, **kwargs)


class ArchiveBackend(metaclass=_Dispatch):
    """The ``archive`` result backend: ``result_backend = "archive+redis://..."``."""

    wrapped_url: str | None = None


class DjangoArchiveBackend(ArchiveBackend):
    """``result_backend = "archive+django-db"`` (Celery splits a backend name from its URL only
    at ``://``, so this spelling has an entry point of its own; ``archive+django-db://`` works too)."""

    wrapped_url = "django-db://"
