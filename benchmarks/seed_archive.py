"""The seed guide's "Archival Before Cleanup" script (ORM `.all()`, a JSON line per row, then
one DELETE), taking the backend URL and the days as arguments: the baseline users run today.

As printed in the guide it does not run on Celery 5.7 (`SessionManager()` is not callable as a
context manager, and `models.Task` has no `name` or `worker`); the changes here are opening the
session through the backend and querying `models.TaskExtended`."""

import json
import sys
from datetime import datetime, timedelta

from celery import Celery
from celery.backends.database import models

app = Celery("myapp", backend=sys.argv[1])


def archive_old_results(days: int = 30, archive_file: str = "results_archive.jsonl") -> None:
    cutoff = datetime.utcnow() - timedelta(days=days)
    archived_count = 0
    with app.backend.ResultSession() as sess:
        old_tasks = sess.query(models.TaskExtended).filter(models.Task.date_done < cutoff).all()
        with open(archive_file, "a") as f:
            for task in old_tasks:
                archive_entry = {
                    "task_id": task.task_id, "name": task.name, "status": task.status, "result": str(task.result),
                    "date_done": task.date_done.isoformat(), "worker": task.worker, "retries": task.retries,
                }
                f.write(json.dumps(archive_entry) + "\n")
                archived_count += 1
        if archived_count > 0:
            sess.query(models.TaskExtended).filter(models.Task.date_done < cutoff).delete()
            sess.commit()
    print(archived_count)


if __name__ == "__main__":
    archive_old_results(int(sys.argv[2]), sys.argv[3])
