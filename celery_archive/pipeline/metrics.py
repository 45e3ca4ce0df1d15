"""A run's figures in Prometheus' text exposition format, for node_exporter's textfile
collector (written to a temp file, then renamed: a scrape never sees half a file)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery_archive.errors import disk_error

_FIELDS = {
    "selected": "Results the last run selected",
    "archived": "Results the last run archived",
    "verified": "Results the last run verified in the archive",
    "deleted": "Results the last run deleted from the backend after verifying them",
    "skipped_changed": "Results the last run kept because they changed after they were read",
    "deleted_by_rules": "Results the last run deleted without an archive (delete rules)",
    "files": "Data files the last run wrote",
    "bytes": "Bytes the last run wrote",
    "seconds": "Duration of the last run in seconds",
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(report: Any, now: float | None = None) -> str:
    lines = []
    labels = f'sink="{_label(report.sink)}"'
    for name, help_text in _FIELDS.items():
        metric = f"celery_archive_run_{name}"
        lines += [f"# HELP {metric} {help_text}.", f"# TYPE {metric} gauge", f"{metric}{{{labels}}} {getattr(report, name)}"]
    lines += ["# HELP celery_archive_run_stopped_early 1 if the last run stopped at --max-runtime.",
              "# TYPE celery_archive_run_stopped_early gauge",
              f"celery_archive_run_stopped_early{{{labels}}} {int(report.stopped_early)}",
              "# HELP celery_archive_last_success_timestamp_seconds When the last run finished.",
              "# TYPE celery_archive_last_success_timestamp_seconds gauge",
              f"celery_archive_last_success_timestamp_seconds{{{labels}}} {now if now is not None else time.time():.3f}"]
    if report.rules:
        lines += ["# HELP celery_archive_rule_results Results per retention rule and outcome in the last run.",
                  "# TYPE celery_archive_rule_results gauge"]
        for rule, counts in report.rules.items():
            for outcome, n in counts.items():
                lines.append(f'celery_archive_rule_results{{{labels},rule="{_label(rule)}",outcome="{outcome}"}} {n}')
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, report: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(render(report))
        os.replace(tmp, path)
    except OSError as exc:
        raise disk_error("writing metrics to", path, exc) from exc
