#!/usr/bin/env bash
# Install LocalStack's runtime (S3 and KMS) into its own Python 3.13 venv: localstack/.venv.
# No Docker and no account needed. Takes ~40 s and ~500 MB the first time; a no-op after.
# Usage: bash localstack/install.sh   (PYTHON313=/path/to/python3.13 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")"

if [ -x .venv/bin/python ] && .venv/bin/python -c 'import localstack.runtime.main' 2>/dev/null; then
  exit 0
fi
PY=${PYTHON313:-}
if [ -z "$PY" ]; then
  for candidate in "$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python3.13" python3.13; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "localstack/install.sh: LocalStack's runtime needs Python 3.13; set PYTHON313=/path/to/python3.13" >&2
  exit 1
fi
"$PY" -m venv .venv
# The runtime's newest release on PyPI, with the pins it needs to import.
.venv/bin/pip install -q --disable-pip-version-check --no-warn-script-location 'localstack-core[runtime]==2026.3.0' \
  'cbor2<6' 'cryptography==44.0.3' 'pyopenssl==24.3.0' 'service_identity==24.2.0'
