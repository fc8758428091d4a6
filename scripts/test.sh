#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh machine, then runs them.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k frontend`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"

exec "$PYTHON" -m pytest -q "$@"
