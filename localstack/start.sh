#!/usr/bin/env bash
# Start LocalStack's runtime (S3 + KMS) as a host process on 127.0.0.1, no Docker.
# Usage: bash localstack/start.sh [PORT] [DATA_DIR]   (defaults: 4566, localstack/.data)
# Prints the endpoint once it answers, then keeps running in the background; its log is
# DATA_DIR/localstack.log and its pid DATA_DIR/localstack.pid. Stop it with
#   bash localstack/stop.sh [DATA_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port=${1:-4566}
data=${2:-$here/.data}
bash "$here/install.sh"
mkdir -p "$data"
# GATEWAY_SERVER=hypercorn: the default server binds 0.0.0.0 whatever GATEWAY_LISTEN says.
env GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=s3,kms DISABLE_EVENTS=1 \
    SKIP_SSL_CERT_DOWNLOAD=1 EAGER_SERVICE_LOADING=1 LOCALSTACK_VOLUME_DIR="$data" FILESYSTEM_ROOT="$data" \
    nohup "$here/.venv/bin/python" -m localstack.runtime.main >"$data/localstack.log" 2>&1 &
echo $! >"$data/localstack.pid"
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/_localstack/health" 2>/dev/null | grep -q '"s3": "\(available\|running\)"'; then
    echo "http://127.0.0.1:$port"
    exit 0
  fi
  if ! kill -0 "$(cat "$data/localstack.pid")" 2>/dev/null; then
    echo "localstack/start.sh: LocalStack exited; see $data/localstack.log" >&2
    tail -20 "$data/localstack.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "localstack/start.sh: LocalStack did not answer on 127.0.0.1:$port within 60 s; see $data/localstack.log" >&2
exit 1
