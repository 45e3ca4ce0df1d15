"""kill -9 at random moments of real `celery-archive prune` processes: each round prunes one
day more of an archive whose results are spread over days (each round first finishes what the
killed one left), checking the archive after every kill; then one prune run to its end.

    .venv/bin/python tests/prune_kill_loop.py 30
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from conftest import celery_app
from forget_support import archived_ids, holders, local_bytes, marker, restored
from helpers import archive

EXE = str(Path(sys.executable).parent / "celery-archive")
DAYS = 16


@dataclass
class Outcome:
    rounds: int
    killed: int
    lost: int  # results newer than every cutoff asked for that a query did not see, at any check
    duplicated: int  # results a query saw more than once, at any check
    unrestorable: int
    verify_failed: int
    left: int  # results older than the last cutoff still seen at the end
    bytes_left: int  # of those, whose payload is still in any file of the archive
    seed: int


def make(url: str, sink: str, per_day: int = 12) -> dict[str, dt.datetime]:
    """Results spread over DAYS days (40 to 40 + DAYS days old), archived in small files: id -> date_done."""
    app = celery_app(url)
    base = dt.datetime.now(dt.timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0) - dt.timedelta(days=40)
    done: dict[str, dt.datetime] = {}
    for d in range(DAYS):
        for i in range(per_day):
            tid = f"p{d:02d}-{i:02d}"
            app.backend.store_result(tid, {"secret": marker(tid)}, "SUCCESS")
            done[tid] = base - dt.timedelta(days=d, minutes=10 * i)  # the cutoffs below fall inside days
    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as conn:
        for tid, at in done.items():
            conn.execute(sa.text("UPDATE celery_taskmeta SET date_done = :d WHERE task_id = :t"),
                         {"d": at.strftime("%Y-%m-%d %H:%M:%S.%f"), "t": tid})
    engine.dispose()
    archive(url, sink, max_file_bytes=2048, batch_size=6)  # type: ignore[arg-type]
    return done


def loop(sink: str, done: dict[str, dt.datetime], rounds: int, seed: int | None = None) -> Outcome:
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    oldest = min(done.values())
    lost: set[str] = set()
    duplicated = unrestorable = verify_failed = killed = 0

    def cutoff(r: int) -> dt.datetime:  # round r takes about one day more, each cutoff an hour into a day
        return oldest + dt.timedelta(days=r, hours=1, minutes=5)  # between two results (10 min apart)

    def prune(at: dt.datetime) -> list[str]:
        age = int((dt.datetime.now(dt.timezone.utc) - at).total_seconds())
        return [EXE, "prune", "--sink", sink, "--older-than", f"{age}s", "--lease-ttl", "1s", "--json"]

    began = time.monotonic()
    subprocess.run(prune(cutoff(0)), capture_output=True, timeout=300, check=True)
    span, watch, asked = time.monotonic() - began, 0.0, cutoff(0)
    for r in range(1, rounds + 1):
        asked = cutoff(min(r, DAYS - 2))
        proc = subprocess.Popen(prune(asked), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(watch + rng.uniform(0.05, 1.1 * span))
        watch = 0.0
        if proc.poll() is None:
            killed += 1
            watch = 1.2
        proc.kill()
        proc.wait()
        seen = Counter(archived_ids(sink))
        kept = [t for t, at in done.items() if at >= asked]
        lost |= {t for t in kept if not seen[t]}
        duplicated += sum(n - 1 for n in seen.values() if n > 1)
        try:
            unrestorable += Counter(restored(sink, kept)) != Counter(kept)
        except AssertionError as exc:
            unrestorable += 1
            print(f"round {r}: restore failed: {str(exc)[-800:]}", file=sys.stderr)
        out = subprocess.run([EXE, "verify", "--sink", sink, "--json"], capture_output=True, text=True, timeout=300)
        verify_failed += not (out.returncode == 0 and json.loads(out.stdout)["ok"])
    time.sleep(watch)
    final = subprocess.run(prune(asked), capture_output=True, text=True, timeout=300)
    if final.returncode:
        raise RuntimeError(f"the final prune failed: {final.stdout}{final.stderr}")
    seen = Counter(archived_ids(sink))
    kept = [t for t, at in done.items() if at >= asked]
    gone = [t for t, at in done.items() if at < asked]
    lost |= {t for t in kept if not seen[t]}
    duplicated += sum(n - 1 for n in seen.values() if n > 1)
    unrestorable += Counter(restored(sink, kept)) != Counter(kept)
    blobs = local_bytes(Path(sink))
    return Outcome(rounds, killed, len(lost), duplicated, unrestorable, verify_failed, sum(seen[t] for t in gone),
                   sum(1 for t in gone if holders(blobs, marker(t))), seed)


def main() -> None:
    import tempfile

    rounds = int(sys.argv[1])
    tmp = Path(tempfile.mkdtemp(prefix="prune-kill-loop-"))
    sink = str(tmp / "archive")
    done = make(f"db+sqlite:///{tmp / 'results.db'}", sink)
    out = loop(sink, done, rounds)
    print(f"prune: {out.rounds} rounds ({out.killed} killed while running), {len(done)} results: lost {out.lost}, duplicated "
          f"{out.duplicated}, unrestorable {out.unrestorable}, verify failed {out.verify_failed}, pruned results left "
          f"{out.left} (their bytes in {out.bytes_left}); seed {out.seed}")


if __name__ == "__main__":
    main()
