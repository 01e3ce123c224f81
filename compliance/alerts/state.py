"""Which alerts are raised, and the notices each channel still has to take.

Every change is a conditional write, so two checks running at once (two beats, a beat and
an operator) raise, clear and digest once: raising inserts the alert's row (a duplicate
key loses) or updates it ``WHERE cleared_at IS NOT NULL``; clearing updates it
``WHERE cleared_at IS NULL``; a day's digest is one `alert_digest` row. Only the write that
won adds the notice, one `alert_delivery` row per channel. Sending claims a delivery
(``claimed_until``, a conditional update) before it goes out, marks it sent after; a send
that failed is released for the next check; one no channel took within `give_up` is
dropped (``abandoned``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from compliance.models import AlertDelivery, AlertDigest, AlertState

RAISED = "raised"
CLEARED = "cleared"
DIGEST = "digest"
TEST = "test"
PENDING = "pending"
SENT = "sent"
ABANDONED = "abandoned"
CLAIM = timedelta(minutes=2)  # a send holds its delivery this long at most


@dataclass(frozen=True)
class Notice:
    """What goes out: a one-line title and a short PII-free body."""

    key: str
    kind: str
    title: str
    body: str


def raised(session: Session) -> list[AlertState]:
    """The alerts raised now, oldest first."""
    query = select(AlertState).where(AlertState.cleared_at.is_(None))
    return list(session.scalars(query.order_by(AlertState.raised_at, AlertState.key)))


def raise_alert(
    session: Session, key: str, condition: str, subject: str, title: str, now: datetime
) -> bool:
    """Mark the alert raised; True only for the one write that raised it."""
    known = session.execute(select(AlertState.key).where(AlertState.key == key)).first()
    if known is None:
        row = AlertState(key=key, condition=condition, subject=subject, title=title, raised_at=now)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # another check inserted it first
            return False
        return True
    changed = update(AlertState).where(AlertState.key == key, AlertState.cleared_at.is_not(None))
    return _one(session, changed.values(title=title, raised_at=now, cleared_at=None))


def clear_alert(session: Session, key: str, now: datetime) -> bool:
    """Mark the alert cleared; True only for the one write that cleared it."""
    changed = update(AlertState).where(AlertState.key == key, AlertState.cleared_at.is_(None))
    return _one(session, changed.values(cleared_at=now))


def claim_digest(session: Session, day: str, now: datetime) -> bool:
    """Take the digest of `day`; True only for the one check that took it."""
    if session.get(AlertDigest, day) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(AlertDigest(day=day, created_at=now))
    except IntegrityError:
        return False
    return True


def digest_sent(session: Session, day: str) -> bool:
    return session.get(AlertDigest, day) is not None


def enqueue(session: Session, notice: Notice, channels: Sequence[str], now: datetime) -> None:
    """One pending delivery of `notice` per channel."""
    for channel in channels:
        session.add(
            AlertDelivery(
                key=notice.key,
                kind=notice.kind,
                channel=channel,
                title=notice.title,
                body=notice.body,
                status=PENDING,
                created_at=now,
                attempts=0,
            )
        )


def pending(session: Session) -> list[AlertDelivery]:
    """Deliveries not sent yet, in the order they were made."""
    query = select(AlertDelivery).where(AlertDelivery.status == PENDING)
    return list(session.scalars(query.order_by(AlertDelivery.id)))


def claim(session: Session, delivery_id: int, now: datetime) -> bool:
    """Take one pending delivery for sending; False when another check holds or sent it."""
    free = (AlertDelivery.claimed_until.is_(None)) | (AlertDelivery.claimed_until < now)
    changed = (
        update(AlertDelivery)
        .where(AlertDelivery.id == delivery_id, AlertDelivery.status == PENDING, free)
        .values(claimed_until=now + CLAIM, attempts=AlertDelivery.attempts + 1)
    )
    return _one(session, changed)


def sent(session: Session, delivery_id: int, now: datetime) -> None:
    values = {"status": SENT, "sent_at": now, "claimed_until": None, "last_error": None}
    session.execute(update(AlertDelivery).where(AlertDelivery.id == delivery_id).values(values))


def failed(session: Session, delivery_id: int, error: str) -> None:
    """Release the delivery for the next check, with why it failed."""
    values = {"claimed_until": None, "last_error": error[:500]}
    session.execute(update(AlertDelivery).where(AlertDelivery.id == delivery_id).values(values))


def abandon_old(session: Session, now: datetime, give_up: timedelta) -> int:
    """Drop deliveries still pending after `give_up`; returns how many."""
    changed = (
        update(AlertDelivery)
        .where(AlertDelivery.status == PENDING, AlertDelivery.created_at < now - give_up)
        .values(status=ABANDONED, claimed_until=None)
    )
    return int(cast(CursorResult[Any], session.execute(changed)).rowcount)


def _one(session: Session, statement: Any) -> bool:
    result = cast(
        CursorResult[Any], session.execute(statement.execution_options(synchronize_session=False))
    )
    return result.rowcount == 1
