"""Hold an archive's lease in a process of its own, renewing it, until killed.

    python lease_holder.py SINK TTL_SECONDS
Prints "held <version>" once it holds the lease.
"""

from __future__ import annotations

import sys
import time

from celery_archive.pipeline.lease import Lease
from celery_archive.sinks import open_sink


def main() -> None:
    sink, ttl = open_sink(sys.argv[1]), float(sys.argv[2])
    lease = Lease(sink, "20260101T000000Z-0holdr", ttl)
    lease.acquire()
    print("held", lease.version, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
