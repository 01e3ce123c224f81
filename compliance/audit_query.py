"""Reading the audit trail: `gdpr audit log`'s filters, parsed and turned into a query that
is read page by page (oldest first), so a long trail never sits in memory at once.

A subject is looked up by the HMAC pseudonym of their email, never by the address: the
events of every request of that subject (by its subject pseudonym or any of its identity
pseudonyms), and events that name the pseudonym themselves (their subject or details).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, cast, or_, select
from sqlalchemy.orm import Session

from compliance.errors import ValidationError
from compliance.identities import Identity, parse_identity, pseudonym
from compliance.models import AuditEvent, DsrIdentity, DsrRequest

PAGE = 500
_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DETAILS_WIDTH = 80


@dataclass(frozen=True)
class AuditFilter:
    """What `gdpr audit log` asks for; every part is optional."""

    request_id: uuid.UUID | None = None
    subject: str | None = None  # a pseudonym, never an identity value
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    action: str | None = None
    limit: int | None = None


def email_identity(raw: str) -> Identity:
    """An email address, checked and normalised as requests store it; a malformed one is a
    `ValidationError` that does not repeat it."""
    return parse_identity("email", raw)


def subject_of(pseudonym_key: bytes, identity: Identity) -> str:
    """The pseudonym the trail and the requests know `identity` by."""
    return pseudonym(pseudonym_key, identity)


def parse_when(text: str, now: datetime, *, option: str) -> datetime:
    """An ISO date (midnight UTC), an ISO datetime (UTC unless it says otherwise) or a
    span back from `now`: ``30m``, ``24h``, ``7d``, ``2w``."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        return now - timedelta(**{unit: amount})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{option} is malformed; use an ISO date or datetime (2026-12-01,"
            " 2026-12-01T08:00:00Z) or a span back from now (30m, 24h, 7d, 2w)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def check_window(wanted: AuditFilter) -> None:
    if wanted.since and wanted.until and wanted.since >= wanted.until:
        raise ValidationError("--since must be before --until; swap or widen them")


def events(session: Session, wanted: AuditFilter, page: int = PAGE) -> Iterator[AuditEvent]:
    """The events `wanted` names, oldest first, read `page` at a time (keyset on seq)."""
    check_window(wanted)
    query = _filtered(wanted)
    left = wanted.limit
    after = 0
    while left is None or left > 0:
        size = page if left is None else min(page, left)
        rows = session.scalars(
            query.where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(size)
        ).all()
        yield from rows
        if len(rows) < size:
            return
        after = rows[-1].seq
        if left is not None:
            left -= len(rows)
        session.expunge_all()  # keep the identity map as small as one page


def _filtered(wanted: AuditFilter) -> Select[AuditEvent]:
    query = select(AuditEvent)
    if wanted.request_id is not None:
        query = query.where(AuditEvent.request_id == wanted.request_id)
    if wanted.subject is not None:
        query = query.where(_names_subject(wanted.subject))
    if wanted.since is not None:
        query = query.where(AuditEvent.at >= wanted.since)
    if wanted.until is not None:
        query = query.where(AuditEvent.at < wanted.until)
    if wanted.action is not None:
        query = query.where(AuditEvent.action == wanted.action)
    return query


def _names_subject(subject: str) -> Any:
    requests = select(DsrRequest.id).where(DsrRequest.subject == subject)
    identified = select(DsrIdentity.request_id).where(DsrIdentity.value_hmac == subject)
    return or_(
        AuditEvent.request_id.in_(requests),
        AuditEvent.request_id.in_(identified),
        AuditEvent.subject == subject,
        cast(AuditEvent.details, String).contains(subject, autoescape=True),
    )


def describe(event: AuditEvent) -> dict[str, Any]:
    """A JSON-ready view of one event (already PII-free: the trail holds none)."""
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


def line(event: AuditEvent) -> str:
    """One line for a person: time, seq, actor, action, request id, short details."""
    details = " ".join(f"{k}={v}" for k, v in sorted(event.details.items()))
    if len(details) > _DETAILS_WIDTH:
        details = details[: _DETAILS_WIDTH - 3] + "..."
    request = str(event.request_id) if event.request_id else "-"
    at = event.at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{at}  #{event.seq}  {event.actor}  {event.action}  {request}  {details}".rstrip()
