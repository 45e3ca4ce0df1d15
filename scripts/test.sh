#!/usr/bin/env bash
# Install everything from nothing and run the whole test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# Celery <= 5.6 stores results in its old format (a pickle in `result`), and each Celery
# version stores date_done by its own rules (README, "Time zones"); the tests make such
# results with the real Celery of each version, each in a venv of its own (made once, reused).
CACHE=${CELERY_ARCHIVE_VENVS:-$HOME/.cache/celery-archive}  # shared by every checkout (CI's clones too)
old_celery() {  # VENV VERSION: VENV is made, or linked to the shared one for VERSION
  if ! "$1/bin/python" -c "import celery, sys; sys.exit(celery.__version__ != '$2')" 2>/dev/null; then
    local shared="$CACHE/celery-$2"
    if ! "$shared/bin/python" -c "import celery, sys; sys.exit(celery.__version__ != '$2')" 2>/dev/null; then
      rm -rf "$shared" && mkdir -p "$CACHE" && "$PY" -m venv "$shared"
      "$shared/bin/pip" install -q --disable-pip-version-check "celery==$2" 'sqlalchemy>=2' 'psycopg[binary]' pymysql redis
    fi
    rm -rf "$1" && ln -s "$shared" "$1"
  fi
}
old_celery .venv56 5.6.3
old_celery .venv53 5.3.6
old_celery .venv54 5.4.0
old_celery .venv55 5.5.3

bash scripts/services.sh

# The web pages' browser tests (tests/test_web_browser.py) drive Debian's own chromium through
# its chromedriver; nothing downloads a browser.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi

# LocalStack's runtime (S3 checks moto cannot do) needs Python 3.13; its tests run wherever
# 3.13 is present, and this installs it there (its own venv, ~40 s the first time).
bash localstack/install.sh || echo "LocalStack not installed (no Python 3.13): its tests will be skipped"

.venv/bin/ruff check celery_archive tests benchmarks
.venv/bin/mypy celery_archive
.venv/bin/python -m pytest -q --durations=25 "$@"
