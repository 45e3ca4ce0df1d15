"""kill -9 at random points, round after round, on real processes (kill_loop.py): nothing is
lost at any point, and after one run to the end nothing is archived twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import db_url
from kill_loop import loop


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "rounds", "extra"), [("sqlite", 10, ()), ("postgresql", 6, ()), ("mysql", 4, ()),
                                                    ("postgresql", 6, ("--commit-every", "120"))],
                         ids=["sqlite", "postgresql", "mysql", "postgresql-in-parts"])
def test_kill_9_at_random_points_loses_and_duplicates_nothing(kind: str, rounds: int, extra: tuple[str, ...],
                                                              request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """In parts too: each round's 400 results make 4 parts (batches of 40), so kills land
    between a part's commit and its purge, and in a purge while the next part is taken."""
    url = db_url(request, kind, tmp_path)
    old: set[str] = set()
    out = loop(url, str(tmp_path / "archive"), old, rounds, per_round=400, extra=extra)
    assert len(old) == 400 * (rounds + 1)  # a calibration round first
    assert (out.lost, out.duplicated, out.left_in_source) == (0, 0, 0), out
    assert out.killed >= max(2, rounds // 3), out  # rounds killed while they were running (the rest finished first)
    if extra:  # the runs did commit in parts: at most 120 results a part
        assert len(list((tmp_path / "archive" / "manifests").glob("*.json"))) >= len(old) / 120
