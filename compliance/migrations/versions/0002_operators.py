"""operators: roles, and on PostgreSQL the rules the database itself enforces

Revision ID: 0002
Revises: 0001

On PostgreSQL an operator is a database login that is a member of the group role
``<database>_operators`` (created here when missing). For such a session the triggers below:

- record ``session_user`` as who submitted and who approved a request (the client cannot
  choose it), refuse an approval by the submitter (four-eyes), and allow only the
  transitions the operator's roles permit (``operator_role``);
- refuse an audit event whose actor is not ``session_user``;
- let only admins change ``operator_role`` and ``legal_hold``, and another operator's
  ``operator_otp`` row.

The audit trail is append-only for every login, the owner included: UPDATE, DELETE and
TRUNCATE of ``audit_event`` are refused by triggers and revoked from the owner.
Logins that are not operators (the owner the workers use, a superuser) pass the request
rules: they run the workers' transitions. See ops/README.md, "Operators and the threat model".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import compliance.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPERATOR_TABLES_RW = (
    "dsr_request",
    "dsr_identity",
    "legal_hold",
    "download_link",
    "export_package",
    "retention_lease",
    "retention_run",
    "retention_part",
    "suppression",
)

FUNCTIONS = """
CREATE OR REPLACE FUNCTION gdpr_operator_group() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT left(current_database(), 53) || '_operators' $$;

CREATE OR REPLACE FUNCTION gdpr_session_operator() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT lower(btrim(session_user::text)) $$;

CREATE OR REPLACE FUNCTION gdpr_is_operator_session() RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT EXISTS (
    SELECT 1 FROM pg_auth_members m
    JOIN pg_roles g ON g.oid = m.roleid
    JOIN pg_roles u ON u.oid = m.member
    WHERE g.rolname = gdpr_operator_group() AND u.rolname = session_user)
$$;

CREATE OR REPLACE FUNCTION gdpr_require_role(wanted text, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM operator_role
                 WHERE name = gdpr_session_operator() AND role = wanted) THEN
    RAISE EXCEPTION 'gdpr: operator % may not %: it needs the % role',
      gdpr_session_operator(), what, wanted USING ERRCODE = 'insufficient_privilege';
  END IF;
END $$;

CREATE OR REPLACE FUNCTION gdpr_guard_request() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  me text := gdpr_session_operator();
BEGIN
  IF NOT gdpr_is_operator_session() THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'INSERT' THEN
    PERFORM gdpr_require_role('agent', 'submit requests');
    IF NEW.status <> 'received' THEN
      RAISE EXCEPTION 'gdpr: a request starts as received, not %', NEW.status
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.submitted_by := me;
    NEW.approved_by := NULL;
    NEW.approved_at := NULL;
    RETURN NEW;
  END IF;
  IF NEW.id <> OLD.id OR NEW.kind <> OLD.kind OR NEW.subject <> OLD.subject
     OR NEW.submitted_by <> OLD.submitted_by OR NEW.submitted_at <> OLD.submitted_at
     OR NEW.dry_run <> OLD.dry_run OR NEW.receipt::text IS DISTINCT FROM OLD.receipt::text
     OR NEW.origin IS DISTINCT FROM OLD.origin THEN
    RAISE EXCEPTION 'gdpr: operator % may not change what was submitted', me
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.status = OLD.status THEN
    IF NEW.approved_by IS DISTINCT FROM OLD.approved_by
       OR NEW.completed_at IS DISTINCT FROM OLD.completed_at
       OR NEW.lease_until IS DISTINCT FROM OLD.lease_until THEN
      RAISE EXCEPTION 'gdpr: operator % may not change a % request that way', me, OLD.status
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM operator_role WHERE name = me) THEN
      RAISE EXCEPTION 'gdpr: operator % holds no role', me
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
  END IF;
  IF OLD.status = 'received' AND NEW.status = 'awaiting_approval' THEN
    PERFORM gdpr_require_role('agent', 'submit requests');
  ELSIF OLD.status = 'received' AND NEW.status = 'queued' THEN
    IF NEW.kind = 'erasure' AND NOT NEW.dry_run THEN
      -- pre-approved only when the suppression list or a retention policy asks for it
      IF coalesce(NEW.origin, '') NOT LIKE 'suppression:%'
         AND coalesce(NEW.origin, '') NOT LIKE 'retention:%' THEN
        RAISE EXCEPTION 'gdpr: an erasure needs a second operator''s approval'
          USING ERRCODE = 'insufficient_privilege';
      END IF;
      PERFORM gdpr_require_role('admin', 'queue erasures for the suppression list or retention');
    ELSE
      PERFORM gdpr_require_role('agent', 'submit requests');
    END IF;
  ELSIF OLD.status = 'awaiting_approval' AND NEW.status = 'queued' THEN
    PERFORM gdpr_require_role('approver', 'approve erasures');
    IF me = OLD.submitted_by THEN
      RAISE EXCEPTION 'gdpr: % submitted request % and cannot also approve it (four-eyes)',
        me, OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.approved_by := me;
  ELSIF OLD.status IN ('received', 'awaiting_approval') AND NEW.status = 'rejected' THEN
    PERFORM gdpr_require_role('approver', 'reject erasures');
  ELSIF OLD.status IN ('received', 'awaiting_approval', 'queued', 'failed', 'on_hold')
        AND NEW.status = 'cancelled' THEN
    PERFORM gdpr_require_role('agent', 'cancel requests');
  ELSIF OLD.status = 'failed' AND NEW.status = 'queued' THEN
    PERFORM gdpr_require_role('agent', 'retry requests');
  ELSIF OLD.status = 'on_hold' AND NEW.status = 'queued' THEN
    PERFORM gdpr_require_role('admin', 'resume erasures whose legal hold ended');
  ELSE
    RAISE EXCEPTION 'gdpr: operator % may not move a request from % to %',
      me, OLD.status, NEW.status USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION gdpr_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'gdpr: the audit trail is append-only; % is refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION gdpr_audit_actor() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF gdpr_is_operator_session() AND NEW.actor <> gdpr_session_operator() THEN
    RAISE EXCEPTION 'gdpr: operator % may not record an event as %',
      gdpr_session_operator(), NEW.actor USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION gdpr_otp_own_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  row_name text := CASE WHEN TG_OP = 'DELETE' THEN OLD.name ELSE NEW.name END;
BEGIN
  IF gdpr_is_operator_session() AND row_name <> gdpr_session_operator() THEN
    PERFORM gdpr_require_role('admin', 'change another operator''s one-time codes');
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION gdpr_admin_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF gdpr_is_operator_session() THEN
    PERFORM gdpr_require_role('admin', 'change ' || TG_TABLE_NAME);
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER dsr_request_guard BEFORE INSERT OR UPDATE ON dsr_request
  FOR EACH ROW EXECUTE FUNCTION gdpr_guard_request();
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
  FOR EACH ROW EXECUTE FUNCTION gdpr_audit_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
  FOR EACH STATEMENT EXECUTE FUNCTION gdpr_audit_append_only();
CREATE TRIGGER audit_event_actor BEFORE INSERT ON audit_event
  FOR EACH ROW EXECUTE FUNCTION gdpr_audit_actor();
CREATE TRIGGER operator_role_admin_only BEFORE INSERT OR UPDATE OR DELETE ON operator_role
  FOR EACH ROW EXECUTE FUNCTION gdpr_admin_only();
CREATE TRIGGER legal_hold_admin_only BEFORE INSERT OR UPDATE OR DELETE ON legal_hold
  FOR EACH ROW EXECUTE FUNCTION gdpr_admin_only();
CREATE TRIGGER operator_otp_own_row BEFORE INSERT OR UPDATE OR DELETE ON operator_otp
  FOR EACH ROW EXECUTE FUNCTION gdpr_otp_own_row();
"""

GRANTS = """
DO $$
DECLARE
  grp text := gdpr_operator_group();
  tables_rw text := '{tables_rw}';
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = grp) THEN
    BEGIN
      EXECUTE format('CREATE ROLE %I NOLOGIN', grp);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'cannot create the group role %: ask the DBA to run'
        ' CREATE ROLE % NOLOGIN, then migrate again', grp, grp;
    END;
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), grp);
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', current_schema(), grp);
  EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', current_schema(), grp);
  EXECUTE format('GRANT INSERT, UPDATE ON %s TO %I', tables_rw, grp);
  EXECUTE format('GRANT INSERT ON audit_event TO %I', grp);
  EXECUTE format('GRANT INSERT, UPDATE, DELETE ON operator_role, operator_otp TO %I', grp);
  EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM PUBLIC, CURRENT_USER';
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "operator_role",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("granted_by", sa.String(length=128), nullable=False),
        sa.Column("granted_at", compliance.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "role", name=op.f("pk_operator_role")),
    )
    op.create_table(
        "operator_otp",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("enrolled_at", compliance.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", compliance.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("locked_until", compliance.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_operator_otp")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    op.execute(GRANTS.replace("{tables_rw}", ", ".join(OPERATOR_TABLES_RW)))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in (
            ("dsr_request_guard", "dsr_request"),
            ("audit_event_append_only", "audit_event"),
            ("audit_event_no_truncate", "audit_event"),
            ("audit_event_actor", "audit_event"),
            ("operator_role_admin_only", "operator_role"),
            ("legal_hold_admin_only", "legal_hold"),
            ("operator_otp_own_row", "operator_otp"),
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    op.drop_table("operator_otp")
    op.drop_table("operator_role")
