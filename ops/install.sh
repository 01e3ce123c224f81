#!/usr/bin/env bash
# Create .venv and install the package (with dev extras and system packages when asked).
#   bash ops/install.sh        runtime only
#   bash ops/install.sh dev    tests too (plus Debian's chromium for the browser test)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will fail on CI" >&2
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -c "import compliance, tasks, exporters, celeryconfig" \
  || { echo "install failed: the gdpr package does not import" >&2; exit 1; }
