#!/usr/bin/env bash
# Create the archive buckets: `celery-archive`, and `celery-archive-locked` with Object Lock
# (for sinks with ?object_lock=...). Idempotent. Runs inside the LocalStack container (as a
# ready hook, with awslocal) or on the host against any endpoint:
#   AWS_ENDPOINT_URL=http://127.0.0.1:4566 bash localstack/init-buckets.sh [BUCKET_PREFIX]
set -euo pipefail
prefix=${1:-celery-archive}
if command -v awslocal >/dev/null 2>&1; then aws=(awslocal); else aws=("${AWS_CLI:-aws}"); fi
exists() { "${aws[@]}" s3api head-bucket --bucket "$1" >/dev/null 2>&1; }
exists "$prefix" || "${aws[@]}" s3api create-bucket --bucket "$prefix" >/dev/null
exists "$prefix-locked" || "${aws[@]}" s3api create-bucket --bucket "$prefix-locked" --object-lock-enabled-for-bucket >/dev/null
echo "buckets ready: s3://$prefix s3://$prefix-locked"
