"""alerts: raised conditions, their deliveries per channel, daily digests, refused tokens

Revision ID: 0003
Revises: 0002

`alert_state` remembers which condition is raised (one alert until it clears),
`alert_delivery` holds each notice per channel until that channel took it, `alert_digest`
one row per day's digest, `token_refusal` the download service's refused tokens by client
pseudonym and time. On PostgreSQL the operators' group may read them all and run
`gdpr alerts check` (write the alert tables).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import compliance.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ALERT_TABLES = ("alert_state", "alert_delivery", "alert_digest", "token_refusal")

GRANTS = """
DO $$
DECLARE
  grp text := left(current_database(), 53) || '_operators';
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = grp) THEN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO %I', grp);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I',
                   current_schema(), grp);
  END IF;
END $$;
"""


def _when(name: str, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, compliance.models.UTCDateTime(timezone=True), nullable=nullable)


def _id() -> sa.Column[object]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("condition", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        _when("raised_at", False),
        _when("cleared_at", True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_alert_state")),
    )
    op.create_index(op.f("ix_alert_state_cleared_at"), "alert_state", ["cleared_at"])
    op.create_table(
        "alert_delivery",
        _id(),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _when("created_at", False),
        _when("claimed_until", True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("sent_at", True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_delivery")),
    )
    op.create_index(op.f("ix_alert_delivery_status"), "alert_delivery", ["status"])
    op.create_table(
        "alert_digest",
        sa.Column("day", sa.String(length=10), nullable=False),
        _when("created_at", False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_alert_digest")),
    )
    op.create_table(
        "token_refusal",
        _id(),
        sa.Column("client", sa.String(length=40), nullable=False),
        _when("at", False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_refusal")),
    )
    op.create_index(op.f("ix_token_refusal_at"), "token_refusal", ["at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(GRANTS.replace("{tables}", ", ".join(ALERT_TABLES)))


def downgrade() -> None:
    op.drop_index(op.f("ix_token_refusal_at"), table_name="token_refusal")
    op.drop_table("token_refusal")
    op.drop_table("alert_digest")
    op.drop_index(op.f("ix_alert_delivery_status"), table_name="alert_delivery")
    op.drop_table("alert_delivery")
    op.drop_index(op.f("ix_alert_state_cleared_at"), table_name="alert_state")
    op.drop_table("alert_state")
