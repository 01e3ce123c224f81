"""Legal holds (GDPR Art. 17(3)(e): data needed for legal claims is not erased).

A hold covers a subject, a source, a location of a source (a table, a prefix), or a
subject within one of those. Subjects are stored only as pseudonyms: the subject's and
those of every identity given or found for them at the sources. Whatever a hold covers
is skipped by retention sweeps (and counted as held) and by erasures, which complete for
everything else and wait `on_hold`; when the hold is released or expires, they resume.

Every change is audited; holds are never deleted, only released.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from compliance import audit
from compliance.db import Database
from compliance.errors import NotFoundError, ValidationError
from compliance.freetext import check_text
from compliance.identities import Identities, pseudonym, subject_pseudonym
from compliance.models import LegalHold

MAX_TEXT = 2000
EXPIRED = "expired"  # released_by of a hold that reached its own end date


@dataclass(frozen=True)
class HoldScope:
    """What a new hold covers: a subject (identities), a source, a location, or a mix."""

    identities: Identities | None = None
    source: str | None = None
    location: str | None = None


def add(
    db: Database,
    scope: HoldScope,
    *,
    pseudonym_key: bytes,
    known_sources: Sequence[str],
    reason: str,
    basis: str,
    until: datetime | None,
    operator: str,
    now: datetime,
    linked: Identities | None = None,
) -> LegalHold:
    """Record a hold. `linked`: identities the sources link to the subject's (resolved
    by the caller), kept as pseudonyms too so the hold finds them whichever is used."""
    _check_scope(scope, known_sources)
    _check_text("reason", reason)
    _check_text("basis", basis)
    if until is not None and until <= now:
        raise ValidationError("--until must be a date in the future (YYYY-MM-DD)")
    subject, hmacs = _pseudonyms(scope, linked, pseudonym_key)
    with db.session() as session:
        hold = LegalHold(
            subject=subject,
            identity_hmacs=hmacs,
            source=scope.source,
            location=scope.location,
            reason=reason.strip(),
            legal_basis=basis.strip(),
            created_by=operator,
            created_at=now,
            expires_at=until,
        )
        session.add(hold)
        session.flush()
        audit.record(
            session,
            actor=operator,
            action="hold.add",
            now=now,
            subject=subject,
            details={"hold": hold.id, **_where(hold), "until": _iso(until)},
        )
        return hold


def _check_scope(scope: HoldScope, known_sources: Sequence[str]) -> None:
    if scope.location is not None and scope.source is None:
        raise ValidationError("--table goes with --source: name the source the table is in")
    if scope.identities is None and scope.source is None:
        raise ValidationError("a hold needs a subject (--email, --user-id ...) or --source")
    if scope.source is not None and scope.source not in known_sources:
        listed = ", ".join(known_sources) or "none"
        raise ValidationError(f"no source named {scope.source!r}; sources: {listed}")
    if scope.location is not None and not scope.location.strip():
        raise ValidationError("--table is empty; name a table (or prefix) of the source")


def _check_text(name: str, value: str) -> None:
    if not value or not value.strip():
        raise ValidationError(f"a hold needs --{name} '...'")
    check_text(f"--{name}", value, MAX_TEXT)


def _pseudonyms(
    scope: HoldScope, linked: Identities | None, key: bytes
) -> tuple[str | None, list[str]]:
    if scope.identities is None:
        return None, []
    everything = scope.identities.union(linked or ())
    return subject_pseudonym(key, scope.identities), sorted({pseudonym(key, i) for i in everything})


def release(db: Database, hold_id: int, *, operator: str, reason: str, now: datetime) -> LegalHold:
    """End a hold; what it kept becomes erasable and purgeable again."""
    _check_text("reason", reason)
    with db.session() as session:
        hold = session.get(LegalHold, hold_id, with_for_update=True)
        if hold is None:
            raise NotFoundError(f"no legal hold with id {hold_id}; `gdpr hold list` shows them")
        if hold.released_at is not None:
            raise ValidationError(
                f"legal hold {hold_id} was already released on {hold.released_at:%Y-%m-%d}"
            )
        _end(session, hold, operator, reason, now)
        return hold


def expire(db: Database, now: datetime) -> list[int]:
    """Release every hold whose end date has passed; returns their ids."""
    with db.session() as session:
        due = session.scalars(
            select(LegalHold).where(
                LegalHold.released_at.is_(None),
                LegalHold.expires_at.is_not(None),
                LegalHold.expires_at <= now,
            )
        ).all()
        for hold in due:
            _end(session, hold, EXPIRED, "its end date passed", now)
        return [hold.id for hold in due]


def _end(session: Session, hold: LegalHold, operator: str, reason: str, now: datetime) -> None:
    hold.released_at = now
    hold.released_by = operator
    hold.release_reason = reason.strip()
    audit.record(
        session,
        actor=operator,
        action="hold.expire" if operator == EXPIRED else "hold.release",
        now=now,
        subject=hold.subject,
        details={"hold": hold.id, **_where(hold)},
    )


def active(session: Session, now: datetime) -> list[LegalHold]:
    """Holds in force at `now`."""
    return list(
        session.scalars(
            select(LegalHold)
            .where(
                LegalHold.released_at.is_(None),
                or_(LegalHold.expires_at.is_(None), LegalHold.expires_at > now),
            )
            .order_by(LegalHold.id)
        )
    )


def listing(db: Database, now: datetime, *, everything: bool = False) -> list[LegalHold]:
    """Holds in force (or, with `everything`, every hold ever made), oldest first."""
    with db.session() as session:
        if not everything:
            return active(session, now)
        return list(session.scalars(select(LegalHold).order_by(LegalHold.id)))


# --- what a hold covers ------------------------------------------------------------


def applies_to_subject(hold: LegalHold, pseudonyms: Iterable[str]) -> bool:
    """A hold with a subject covers a subject any of whose pseudonyms it knows; a hold
    without one covers every subject (within its source or location)."""
    if hold.subject is None:
        return True
    known = set(hold.identity_hmacs or ()) | {hold.subject}
    return not known.isdisjoint(pseudonyms)


def covers(hold: LegalHold, source: str, location: str | None = None) -> bool:
    """The hold reaches `source` (and `location` in it, if given)."""
    if hold.source is not None and hold.source != source:
        return False
    return location is None or hold.location is None or hold.location == location


def whole(hold: LegalHold, source: str, location: str | None = None) -> bool:
    """The hold covers all of `source` (or all of `location` in it), whoever's it is."""
    return hold.subject is None and covers(hold, source, location)


def describe(hold: LegalHold) -> dict[str, Any]:
    """A PII-free view (for `hold list --json`, receipts and audit)."""
    return {
        "id": hold.id,
        "subject": hold.subject,
        **_where(hold),
        "reason": hold.reason,
        "basis": hold.legal_basis,
        "created_by": hold.created_by,
        "created_at": _iso(hold.created_at),
        "until": _iso(hold.expires_at),
        "released_at": _iso(hold.released_at),
        "released_by": hold.released_by,
    }


def _where(hold: LegalHold) -> dict[str, Any]:
    return {"source": hold.source or "*", "location": hold.location or "*"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
