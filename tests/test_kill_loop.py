"""kill -9 at random points, round after round, on real processes (kill_loop.py): nothing is
lost at any point, and after one run to the end nothing is archived twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import age_rows, celery_app, db_url
from kill_loop import loop


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "rounds"), [("sqlite", 10), ("postgresql", 6), ("mysql", 4)])
def test_kill_9_at_random_points_loses_and_duplicates_nothing(kind: str, rounds: int, request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    url = db_url(request, kind, tmp_path)
    app = celery_app(url)
    for i in range(1500):
        app.backend.store_result(f"k{i:06d}", {"i": i, "pad": "x" * 100}, "SUCCESS")
    age_rows(url, 40)
    out = loop(url, str(tmp_path / "archive"), {f"k{i:06d}" for i in range(1500)}, rounds)
    assert (out.lost, out.duplicated, out.left_in_source) == (0, 0, 0), out
    assert out.killed >= 1, out  # at least one round was killed while it was running
