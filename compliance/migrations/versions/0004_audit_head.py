"""audit head: on PostgreSQL, lock the audit chain and read its head in one round trip

Revision ID: 0004
Revises: 0003

`gdpr_audit_head(key)` takes the transaction-scoped advisory lock that serialises appends
(`compliance.audit`) and then returns the hash of the chain's last event (NULL when there
is none). The function is VOLATILE, so its query takes a snapshot after the lock was
granted and sees every append committed before: the same lock and the same head as the
two statements it replaces, so runs of either version append to one chain. Nothing on
SQLite (`BEGIN IMMEDIATE` already serialises writers there).
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION gdpr_audit_head(lock_key integer) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(lock_key);
  RETURN (SELECT hash FROM audit_event ORDER BY seq DESC LIMIT 1);
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS gdpr_audit_head(integer)")
