#!/usr/bin/env bash
# Quick start: install into .venv, then run an export and an erasure on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/install.sh
exec .venv/bin/python ops/demo.py "$@"
