"""A hash-chained, pseudonymous audit trail.

Each event's hash covers its content and the previous event's hash, so editing,
deleting or reordering any event breaks the chain from that point on; `verify_chain`
finds the first broken link. Details must hold no personal data: ids, counts, pseudonyms.

Appends are serialised (PostgreSQL: a transaction-scoped advisory lock, taken with the
read of the chain's head in one call, `gdpr_audit_head` of migration 0004; SQLite: the
write lock `BEGIN IMMEDIATE` takes). The lock and the read of the chain's head are paid
once per transaction: while it holds the lock, nobody else can append, so the head of
its next event is the hash of its last one. A savepoint that ends (released or rolled
back) makes the next append read the head again. `append` writes several events in one
statement (the events a run noted, then the transition they lead to).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, text
from sqlalchemy.orm import Session, SessionTransaction

from compliance.models import AuditEvent

GENESIS = "0" * 64
_CHAIN_LOCK_KEY = 0x6764_7072  # "gdpr": PostgreSQL advisory lock serialising appends
_HEAD = "audit_chain_head"  # session.info: (the transaction holding the lock, its head)
# the lock, then the head read under it (a query of its own, so it sees what committed
# before the lock was granted): one round trip
_LOCK_AND_READ_HEAD = text("SELECT gdpr_audit_head(:k)").bindparams(k=_CHAIN_LOCK_KEY)
_EVENTS = cast(Table, AuditEvent.__table__)
_READ_HEAD = select(_EVENTS.c.hash).order_by(_EVENTS.c.seq.desc()).limit(1)
_INSERT = insert(_EVENTS)
_INSERT_ONE = _INSERT.returning(_EVENTS.c.seq)


@dataclass(frozen=True)
class Pending:
    """An event not appended yet: what `record` takes, as a value (for `append`)."""

    actor: str
    action: str
    at: datetime
    request_id: uuid.UUID | None = None
    subject: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


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
    pending = Pending(actor, action, now, request_id, subject, dict(details or {}))
    event = _chained(pending, _head(session))
    event.seq = session.execute(_INSERT_ONE, _row(event)).scalar_one()
    _moved(session, event.hash)
    return event


def append(session: Session, events: Sequence[Pending]) -> None:
    """Append `events` to the chain, in this order, in one statement inside the caller's
    transaction."""
    if not events:
        return
    head = _head(session)
    rows = []
    for pending in events:
        event = _chained(pending, head)
        rows.append(_row(event))
        head = event.hash
    session.execute(_INSERT, rows)
    _moved(session, head)


def _chained(pending: Pending, prev_hash: str) -> AuditEvent:
    event = AuditEvent(
        at=pending.at,
        actor=pending.actor,
        action=pending.action,
        request_id=pending.request_id,
        subject=pending.subject,
        details=dict(pending.details),
        prev_hash=prev_hash,
    )
    event.hash = event_hash(event)
    return event


def _row(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "request_id": event.request_id,
        "subject": event.subject,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _moved(session: Session, head: str) -> None:
    """The chain's head is now `head`, while this transaction holds the lock."""
    session.info[_HEAD] = (_current(session), head)


def _head(session: Session) -> str:
    """The hash of the chain's last event, with the chain locked until this transaction
    ends; read from the database once per transaction (or savepoint)."""
    held = session.info.get(_HEAD)
    if held is not None and held[0] is _current(session):
        return str(held[1])
    if session.get_bind().dialect.name == "postgresql":
        last = session.execute(_LOCK_AND_READ_HEAD).scalar_one_or_none()  # migration 0004
    else:  # SQLite: BEGIN IMMEDIATE (compliance.db) already serialises writers.
        last = session.execute(_READ_HEAD).scalar_one_or_none()
    return last or GENESIS


def _current(session: Session) -> SessionTransaction | None:
    """The innermost transaction: the head read in it holds only while it lasts."""
    return session.get_nested_transaction() or session.get_transaction()


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
    """Every event, oldest first, read `batch` at a time."""
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
        problem = link_problem(event, prev)
        if problem:
            return ChainReport(checked, event.seq, problem)
        prev = event.hash
        checked += 1
    return ChainReport(checked, None)


def link_problem(event: AuditEvent, prev_hash: str) -> str:
    """Why `event` does not follow an event whose hash is `prev_hash` ("" when it does)."""
    if event.prev_hash != prev_hash:
        return "previous-hash link does not match"
    if event_hash(event) != event.hash:
        return "content does not match its hash"
    return ""
