"""``archive_restore_on_read``: a result found in the archive is put back into the live
backend through the backend's own write path (so it carries the backend's expiry and, on
Redis, is published to waiting clients), and the next read of it is live."""

from __future__ import annotations

from typing import Any


def put_back(backend: Any, rec: dict[str, Any], meta: dict[str, Any]) -> None:
    """Store ``meta`` (decoded from ``rec``) in ``backend``; the caller holds the live-only
    guard, so nothing here looks at the archive again."""
    if rec["kind"] == "group":
        backend.save_group(rec["task_id"], meta["result"])
        return
    same_bytes = (rec["storage_format"] == "celery-redis" and hasattr(backend, "get_key_for_task")
                  and hasattr(backend, "set") and rec["content_type"] == backend.content_type)
    if same_bytes:  # the exact bytes the backend held, under its key, with its expiry
        backend.set(backend.get_key_for_task(rec["task_id"]), bytes(rec["raw_value"]))
        return
    backend.store_result(rec["task_id"], meta.get("result"), meta["status"], traceback=meta.get("traceback"),
                         request=_request(backend, meta))


def _request(backend: Any, meta: dict[str, Any]) -> Any:
    """A task request carrying what the backend stores beside the result (result_extended)."""
    from celery.app.task import Context
    from celery.result import result_from_tuple

    children = [result_from_tuple(c, backend.app) for c in meta.get("children") or [] if isinstance(c, (list, tuple))]
    return Context(id=meta.get("task_id"), task=meta.get("name"), args=meta.get("args"), kwargs=meta.get("kwargs"),
                   hostname=meta.get("worker"), retries=meta.get("retries"), children=children,
                   delivery_info={"routing_key": meta.get("queue")}, group=meta.get("group_id"),
                   parent_id=meta.get("parent_id"), ignore_result=False)
