"""kill -9 at random moments of real `celery-archive forget` processes, round after round (each
round asks to forget a few more ids, and first finishes what the killed one left), checking the
archive after every kill; then one forget run to its end. Used by test_forget.py, and as a
field test with more rounds:

    .venv/bin/python tests/forget_kill_loop.py local 50
    .venv/bin/python tests/forget_kill_loop.py s3 20          (an S3 archive on moto's server)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from forget_support import archived_ids, holders, local_bytes, make_archive, marker, restored

EXE = str(Path(sys.executable).parent / "celery-archive")


@dataclass
class Outcome:
    rounds: int
    killed: int  # rounds whose process was still running when killed
    lost: int  # results not asked to be forgotten that a query did not see, at any check
    duplicated: int  # results a query saw more than once, at any check
    unrestorable: int  # checks at which a result not asked to be forgotten did not restore
    verify_failed: int  # checks at which verify failed
    left: int  # ids asked to be forgotten still seen at the end
    bytes_left: int  # ids asked to be forgotten whose id or payload is in any file of a local archive at the end
    seed: int


def _verify(sink: str) -> bool:
    proc = subprocess.run([EXE, "verify", "--sink", sink, "--json"], capture_output=True, text=True, timeout=300)
    return proc.returncode == 0 and json.loads(proc.stdout)["ok"]


def loop(sink: str, ids: list[str], rounds: int, seed: int | None = None, per_round: int = 3, ttl: float = 1.0) -> Outcome:
    """``rounds`` forget processes, each asking for ``per_round`` more ids and killed at a random
    moment; ``ttl`` is their lease's (a killed one's is waited out by the next)."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    asked: list[str] = []
    lost: set[str] = set()
    duplicated = unrestorable = verify_failed = killed = 0
    env = {**os.environ}

    def forget(new: list[str]) -> list[str]:
        return [EXE, "forget", *new, "--sink", sink, "--reason", "kill loop", "--lease-ttl", f"{ttl}s", "--json"]

    pool = [t for t in ids]
    rng.shuffle(pool)
    began = time.monotonic()  # one forget run to its end: how long it takes here, so kills land inside
    first = [pool.pop() for _ in range(per_round)]
    subprocess.run(forget(first), capture_output=True, env=env, timeout=300, check=True)
    asked += first
    span = time.monotonic() - began
    watch = 0.0
    for _ in range(rounds):
        new = [pool.pop() for _ in range(per_round)]
        asked += new
        proc = subprocess.Popen(forget(new), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(watch + rng.uniform(0.05, 1.1 * span))  # start-up, plan, files, revisions, index, erase
        watch = 0.0
        if proc.poll() is None:
            killed += 1
            watch = ttl + 0.2  # the next one watches the dead one's lease
        proc.kill()
        proc.wait()
        kept = [t for t in ids if t not in asked]
        seen = Counter(archived_ids(sink))
        lost |= {t for t in kept if not seen[t]}
        duplicated += sum(n - 1 for n in seen.values() if n > 1)
        try:
            if Counter(restored(sink, kept)) != Counter(kept):
                unrestorable += 1
        except AssertionError:
            unrestorable += 1
        verify_failed += not _verify(sink)
    time.sleep(watch)
    final = subprocess.run(forget(asked), capture_output=True, text=True, env=env, timeout=300)
    if final.returncode not in (0, 5):  # 5: every id asked for was forgotten by the rounds already
        raise RuntimeError(f"the final forget failed: {final.stdout}{final.stderr}")
    kept = [t for t in ids if t not in asked]
    seen = Counter(archived_ids(sink))
    lost |= {t for t in kept if not seen[t]}
    duplicated += sum(n - 1 for n in seen.values() if n > 1)
    unrestorable += Counter(restored(sink, kept)) != Counter(kept)
    verify_failed += not _verify(sink)
    blobs = local_bytes(Path(sink)) if "://" not in sink else []
    bytes_left = sum(1 for t in asked if holders(blobs, t) or holders(blobs, marker(t)))
    return Outcome(rounds, killed, len(lost), duplicated, unrestorable, verify_failed, sum(seen[t] for t in asked), bytes_left,
                   seed)


def main() -> None:
    import tempfile

    kind, rounds = sys.argv[1], int(sys.argv[2])
    tmp = Path(tempfile.mkdtemp(prefix="forget-kill-loop-"))
    url = f"db+sqlite:///{tmp / 'results.db'}"
    sink, server = str(tmp / "archive"), None
    if kind == "s3":
        import boto3
        from helpers import moto_server

        server, env = moto_server("k", "s")
        os.environ.update(env)
        boto3.client("s3").create_bucket(Bucket="forget-loop")
        sink = "s3://forget-loop/arch"
    n = int(os.environ.get("FORGET_LOOP_RESULTS", "200"))
    ids = make_archive(url, sink, "parquet", n=n, again=())
    out = loop(sink, ids, rounds, ttl=1.0 if kind == "local" else 5.0)  # moto's server shares this process
    print(f"{kind}: {out.rounds} rounds ({out.killed} killed while running), {n} results: lost {out.lost}, duplicated "
          f"{out.duplicated}, unrestorable {out.unrestorable}, verify failed {out.verify_failed}, forgotten ids left {out.left} "
          f"(their bytes in {out.bytes_left}); seed {out.seed}")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
