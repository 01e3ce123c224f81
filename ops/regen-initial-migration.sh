#!/usr/bin/env bash
# Regenerate migration 0001 from compliance/models.py. Only valid while no installation
# exists outside development; after the first release, add new revisions instead:
#   .venv/bin/alembic -c <(...) revision --autogenerate
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f compliance/migrations/versions/0001_*.py /tmp/gdpr-regen.db
.venv/bin/python - <<'PY'
from alembic import command
from compliance.db import alembic_config, make_engine
engine = make_engine("sqlite:////tmp/gdpr-regen.db")
command.revision(alembic_config(engine), message="initial schema", autogenerate=True, rev_id="0001")
PY
.venv/bin/ruff format -q compliance/migrations/versions
.venv/bin/ruff check -q --fix compliance/migrations/versions || true
