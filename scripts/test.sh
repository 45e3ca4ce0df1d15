#!/usr/bin/env bash
# Install everything from nothing and run the whole test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# Celery <= 5.6 stores results in its old format (a pickle in `result`); the tests make such
# rows with the real Celery 5.6.3 in a venv of its own.
if ! .venv56/bin/python -c 'import celery, sys; sys.exit(celery.__version__ != "5.6.3")' 2>/dev/null; then
  "$PY" -m venv .venv56
  .venv56/bin/pip install -q --disable-pip-version-check 'celery==5.6.3' 'sqlalchemy>=2' 'psycopg[binary]' pymysql
fi

bash scripts/services.sh

# LocalStack's runtime (S3 checks moto cannot do) needs Python 3.13; its tests run wherever
# 3.13 is present, and this installs it there (its own venv, ~40 s the first time).
bash localstack/install.sh || echo "LocalStack not installed (no Python 3.13): its tests will be skipped"

.venv/bin/ruff check celery_archive tests benchmarks
.venv/bin/mypy celery_archive
.venv/bin/python -m pytest -q "$@"
