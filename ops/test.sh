#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, start services, lint, type-check, test.
#   bash ops/test.sh [pytest args...]
# PostgreSQL and Redis are started only if they are not answering, and stopped again at the
# end only if this run started them; the suite starts and stops its own S3 and SMTP servers.
# Ports, database prefix and Redis dbs: GDPR_TEST_* variables (tests/support/services.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/install.sh dev
GDPR_TEST_RUN_DIR=$(mktemp -d -t gdpr-test-services.XXXXXX)
export GDPR_TEST_RUN_DIR
trap 'bash ops/services.sh down; rm -rf "$GDPR_TEST_RUN_DIR"' EXIT
bash ops/services.sh up postgres redis
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
