#!/usr/bin/env bash
# Stop the LocalStack that start.sh started: bash localstack/stop.sh [DATA_DIR]
# SIGTERM first; LocalStack's shutdown can hang, so SIGKILL after 5 s.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data=${1:-$here/.data}
pid=$(cat "$data/localstack.pid" 2>/dev/null) || { echo "no LocalStack pid file in $data" >&2; exit 1; }
kill "$pid" 2>/dev/null || exit 0
for _ in $(seq 1 50); do
  kill -0 "$pid" 2>/dev/null || exit 0
  sleep 0.1
done
kill -9 "$pid" 2>/dev/null || true
