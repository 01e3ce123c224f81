#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, start services, lint, type-check, test.
#   bash ops/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/install.sh dev
bash ops/services.sh up
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Service-backed tests must fail, not skip, when a service is missing: CI=1 makes them fail.
export CI="${CI:-1}"
set +e
.venv/bin/pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
