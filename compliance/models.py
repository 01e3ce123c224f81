"""ORM models of the control database (DESIGN §4). Schema changes go through Alembic."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    inspect,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the control database; use UTC-aware")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        from datetime import UTC

        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


def column_values(row: Base) -> dict[str, Any]:
    """The columns set on a new, unsaved `row`, by attribute name: one row of an ORM
    bulk ``session.execute(insert(Model), [...])``, which skips the unit of work."""
    names = {attr.key for attr in inspect(type(row)).column_attrs}
    return {name: value for name, value in vars(row).items() if name in names}


class RequestKind(StrEnum):
    EXPORT = "export"
    ERASURE = "erasure"


class RequestStatus(StrEnum):
    RECEIVED = "received"
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    ON_HOLD = "on_hold"  # erased except what a legal hold keeps; resumes when it is released
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DsrRequest(Base):
    __tablename__ = "dsr_request"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)  # pseudonym
    ticket: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)  # operator's note; must not hold PII
    submitted_by: Mapped[str] = mapped_column(String(128))
    submitted_at: Mapped[datetime]
    due_at: Mapped[datetime] = mapped_column(index=True)
    extended_months: Mapped[int] = mapped_column(Integer, default=0)
    extension_reason: Mapped[str | None] = mapped_column(Text)
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[datetime | None]
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None]  # a running claim lives while its heartbeat renews it
    retry_at: Mapped[datetime | None]  # a released request waits in backoff until then
    last_error: Mapped[str | None] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    receipt: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    origin: Mapped[str | None] = mapped_column(String(300), index=True)  # "retention:<policy>"
    notify: Mapped[bool] = mapped_column(Boolean, default=True)  # email the subject when done


class DsrIdentity(Base):
    __tablename__ = "dsr_identity"
    __table_args__ = (Index("ix_dsr_identity_hmac", "value_hmac"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dsr_request.id"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    value_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # wiped at a final state
    value_hmac: Mapped[str] = mapped_column(String(64))
    discovered: Mapped[bool] = mapped_column(Boolean, default=False)  # added by resolve


class DsrStep(Base):
    __tablename__ = "dsr_step"
    __table_args__ = (UniqueConstraint("request_id", "source", "action"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dsr_request.id"), index=True)
    source: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=StepStatus.PENDING)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checkpoint: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ExportPackage(Base):
    __tablename__ = "export_package"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("dsr_request.id"), unique=True, index=True
    )
    object_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    deleted_at: Mapped[datetime | None]


class MultipartUpload(Base):
    """An S3 multipart upload of an export package, recorded before its first part, so
    one whose run died (or whose abort failed) is found and aborted: its parts hold the
    package header with the wrapped data key."""

    __tablename__ = "multipart_upload"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dsr_request.id"), index=True)
    bucket: Mapped[str] = mapped_column(String(256))
    object_key: Mapped[str] = mapped_column(String(1024))
    upload_id: Mapped[str] = mapped_column(String(1024))
    claim: Mapped[int] = mapped_column(Integer)  # the request's attempts value of that run
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    outcome: Mapped[str | None] = mapped_column(String(16))  # completed | aborted


class DownloadLink(Base):
    __tablename__ = "download_link"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dsr_request.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    max_downloads: Mapped[int] = mapped_column(Integer)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None]


class LegalHold(Base):
    """A legal hold (Art. 17(3)(e)): what it covers is neither erased nor purged.

    It covers a subject (by pseudonyms only), a source or one location of a source
    (a table, a prefix), or a subject within a source or location.
    """

    __tablename__ = "legal_hold"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subject: Mapped[str | None] = mapped_column(String(64), index=True)  # pseudonym
    identity_hmacs: Mapped[list[str]] = mapped_column(JSON, default=list)  # the subject's
    source: Mapped[str | None] = mapped_column(String(128))
    location: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    released_at: Mapped[datetime | None]
    released_by: Mapped[str | None] = mapped_column(String(128))
    release_reason: Mapped[str | None] = mapped_column(Text)


class RetentionLease(Base):
    """One lease per policy: while it is held (and not expired) no other run starts."""

    __tablename__ = "retention_lease"

    policy: Mapped[str] = mapped_column(String(256), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    owner: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None]


class RetentionRun(Base):
    """One sweep of one policy: its cutoff (fixed at the start), parts, counts, timings."""

    __tablename__ = "retention_run"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    policy: Mapped[str] = mapped_column(String(256), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    cutoff: Mapped[datetime]
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(32))  # beat | cli
    actor: Mapped[str] = mapped_column(String(128))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class RetentionPart(Base):
    """A key range of a run, worked by one task at a time under its own lease."""

    __tablename__ = "retention_part"
    __table_args__ = (UniqueConstraint("run_id", "part"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("retention_run.id"), index=True)
    part: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    cursor_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # keys may be identities
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(Text)


class AuditEvent(Base):
    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    subject: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Suppression(Base):
    __tablename__ = "suppression"

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)  # pseudonym
    identity_hmacs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    erased_at: Mapped[datetime]


class OperatorRole(Base):
    """A role an operator holds (`gdpr operator grant`); names are canonical
    (`compliance.operators.canonical`). On PostgreSQL the name is a database login."""

    __tablename__ = "operator_role"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    granted_by: Mapped[str] = mapped_column(String(128))
    granted_at: Mapped[datetime]


class OperatorOtp(Base):
    """An operator's enrolled TOTP secret (sealed) and its failure count for lockout."""

    __tablename__ = "operator_otp"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    enrolled_at: Mapped[datetime]
    last_step: Mapped[int] = mapped_column(BigInteger, default=0)  # no code is used twice
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]


class AlertState(Base):
    """One alert condition for one subject (``failed_steps:all``, ``retention_late:<policy>``)
    and whether it is raised: raised once (a conditional update), cleared once."""

    __tablename__ = "alert_state"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    condition: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    title: Mapped[str] = mapped_column(Text)  # PII-free: ids, counts, policy names
    raised_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None] = mapped_column(index=True)  # None while raised


class AlertDelivery(Base):
    """One notice (raised, cleared, digest) for one channel: pending until that channel
    took it; a failed send stays pending for the next run (`compliance.alerts.state`)."""

    __tablename__ = "alert_delivery"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(300))  # the alert's key, or ``digest:<day>``
    kind: Mapped[str] = mapped_column(String(16))  # raised | cleared | digest
    channel: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | sent | abandoned
    created_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]  # a run sending it now
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class AlertDigest(Base):
    """The daily digest of one day (in the configured timezone): one row, one digest."""

    __tablename__ = "alert_digest"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    created_at: Mapped[datetime]


class TokenRefusal(Base):
    """A download token the download service refused, by the client's pseudonym (an HMAC
    of its address, never the address) and time; counted by the alerts, pruned by them."""

    __tablename__ = "token_refusal"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    client: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(index=True)
