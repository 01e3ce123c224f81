"""A hash-chained, pseudonymous audit trail.

Each event's hash covers its content and the previous event's hash, so editing,
deleting or reordering any event breaks the chain from that point on; `verify_chain`
finds the first broken link. Details must hold no personal data: ids, counts, pseudonyms.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from compliance.models import AuditEvent

GENESIS = "0" * 64
_CHAIN_LOCK_KEY = 0x6764_7072  # "gdpr": PostgreSQL advisory lock serialising appends


@dataclass(frozen=True)
class ChainReport:
    checked: int
    broken_at: int | None  # seq of the first event whose hash does not verify
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    now: datetime,
    request_id: uuid.UUID | None = None,
    subject: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction."""
    _lock_chain(session)
    last = session.execute(
        select(AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).scalar_one_or_none()
    event = AuditEvent(
        at=now,
        actor=actor,
        action=action,
        request_id=request_id,
        subject=subject,
        details=dict(details or {}),
        prev_hash=last or GENESIS,
    )
    event.hash = event_hash(event)
    session.add(event)
    session.flush()
    return event


def _lock_chain(session: Session) -> None:
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        from sqlalchemy import text

        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_KEY})
    # SQLite: BEGIN IMMEDIATE (compliance.db) already serialises writers.


def event_hash(event: AuditEvent) -> str:
    payload = {
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "request_id": str(event.request_id) if event.request_id else None,
        "subject": event.subject,
        "details": event.details,
        "prev": event.prev_hash,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def iter_events(session: Session, batch: int = 1000) -> Iterator[AuditEvent]:
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > last_seq)
            .order_by(AuditEvent.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_seq = rows[-1].seq


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain from the start; report the first event that does not verify."""
    prev = GENESIS
    checked = 0
    for event in iter_events(session):
        if event.prev_hash != prev:
            return ChainReport(checked, event.seq, "previous-hash link does not match")
        if event_hash(event) != event.hash:
            return ChainReport(checked, event.seq, "content does not match its hash")
        prev = event.hash
        checked += 1
    return ChainReport(checked, None)
