"""The seed guide's Redis approach, as the issue describes it: KEYS celery-task-meta-*, then
TTL and GET per key, a JSON line each, DEL per key."""

import json
import sys

import redis

r = redis.from_url(sys.argv[1])
with open(sys.argv[2], "w") as f:
    n = 0
    for key in r.keys("celery-task-meta-*"):
        ttl = r.ttl(key)
        value = r.get(key)
        if value is None:
            continue
        f.write(json.dumps({"key": key.decode(), "ttl": ttl, "value": value.decode("utf-8", "replace")}) + "\n")
        r.delete(key)
        n += 1
print(n)
