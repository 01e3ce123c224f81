"""Reading the audit trail: `gdpr audit log`, filtered by request, subject, time and action.

A subject is looked up by pseudonym only: an e-mail address given by the operator becomes
its HMAC pseudonym before the query, and finds the events that name that pseudonym and the
events of every request one of whose identities it is. Events are read oldest first, a page
at a time, so a long trail never sits in memory.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select

from compliance.db import Database
from compliance.errors import ValidationError
from compliance.models import AuditEvent, DsrIdentity

PAGE = 500
_RELATIVE = re.compile(r"(\d{1,5})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class Filter:
    request_id: uuid.UUID | None = None
    subject: str | None = None  # a pseudonym
    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    limit: int | None = None


def parse_when(text: str, now: datetime, option: str) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or a span back from `now`:
    ``7d``, ``24h``, ``30m``."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            f"{option} must be a date or time like 2026-12-01 or 2026-12-01T09:30, or a span"
            " like 7d, 24h or 30m"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def events(db: Database, where: Filter) -> Iterator[dict[str, Any]]:
    """The matching events, oldest first, as plain values."""
    conditions = _conditions(where)
    after, left = 0, where.limit
    while left is None or left > 0:
        size = PAGE if left is None else min(PAGE, left)
        with db.session() as session:
            page = list(
                session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.seq > after, *conditions)
                    .order_by(AuditEvent.seq)
                    .limit(size)
                )
            )
        yield from (_plain(event) for event in page)
        if len(page) < size:
            return
        after = page[-1].seq
        left = None if left is None else left - len(page)


def _conditions(where: Filter) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if where.request_id is not None:
        found.append(AuditEvent.request_id == where.request_id)
    if where.subject is not None:
        requests = select(DsrIdentity.request_id).where(DsrIdentity.value_hmac == where.subject)
        found.append(or_(AuditEvent.subject == where.subject, AuditEvent.request_id.in_(requests)))
    if where.since is not None:
        found.append(AuditEvent.at >= where.since)
    if where.until is not None:
        found.append(AuditEvent.at < where.until)
    if where.action is not None:
        found.append(AuditEvent.action == where.action)
    return found


def _plain(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "request_id": str(event.request_id) if event.request_id else None,
        "subject": event.subject,
        "details": event.details,
        "hash": event.hash,
    }
