"""Request services: submit, approve, reject, cancel, retry, extend (reading: `queries`).

The CLI and the tasks call these; they own the transaction boundaries and dispatch only
after commit. Raw identity values are sealed with the keyring and wiped when a request
reaches a final state; the HMAC pseudonym stays for lookups and audit.

A request has at most one contact: the email address the subject is written to (the
download link, the erasure receipt). It is the request's only email address, or the one
named as `Submission.contact` when several are given: an operator's request with two
addresses and no contact is refused, since one of them may not be the subject's. The
subject is known by the pseudonym of its contact (else of its first identity by type
priority), and notifications go to the address with that pseudonym only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from compliance import audit, defaults
from compliance.config import Settings
from compliance.dates import add_months
from compliance.db import Database
from compliance.dispatch import Dispatcher, dispatch_quietly
from compliance.errors import PermissionDeniedError, StateError, ValidationError
from compliance.freetext import check_text
from compliance.identities import Identities, Identity, IdentityType, pseudonym, subject_pseudonym
from compliance.keyring import Keyring
from compliance.lifecycle import FINAL, Event, transition
from compliance.models import (
    DownloadLink,
    DsrIdentity,
    DsrRequest,
    DsrStep,
    RequestKind,
    RequestStatus,
    column_values,
)
from compliance.operators import REFUSED, same_operator
from compliance.queries import get_request
from compliance.sealed import sealed_identity, wipe_identities
from compliance.sources.base import DataSource
from compliance.sources.lookup import require_lookup

MAX_TICKET = 128
MAX_NOTE = 2000


@dataclass(frozen=True)
class Submission:
    kind: RequestKind
    identities: Identities
    ticket: str | None = None
    note: str | None = None
    dry_run: bool = False
    origin: str | None = None  # "retention:<policy>" for erasures a retention sweep starts
    pre_approved: bool = False  # approved in advance (a retention policy in the manifest)
    notify: bool = True  # email the subject when done
    contact: Identity | None = None  # the email to write to; one of `identities`


def parse_request_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except (ValueError, AttributeError):
        raise ValidationError(
            "request id is malformed; expected a UUID as shown by `gdpr request list`"
        ) from None


def submit(
    db: Database,
    settings: Settings,
    keyring: Keyring,
    submission: Submission,
    *,
    sources: Iterable[DataSource],
    operator: str,
    now: datetime,
    dispatcher: Dispatcher,
) -> DsrRequest:
    """Store a new request (received, then awaiting approval or queued) and dispatch it.

    Refused, with nothing written, when none of `sources` (the registry; loaded without
    live checks is enough) can look a subject up by any of the request's identity types.
    """
    check_text("ticket", submission.ticket, MAX_TICKET, submission.identities)
    check_text("note", submission.note, MAX_NOTE, submission.identities)
    subject = _subject(keyring.pseudonym_key, submission)
    require_lookup(sources, submission.identities.types())
    request_id = uuid.uuid4()
    event = _first_event(settings, submission)
    submitted = audit.Pending(
        operator, "request.submit", now, request_id, subject, _submit_details(submission)
    )
    with db.session() as session:
        new = _new_request(request_id, submission, subject, operator, now)
        session.execute(insert(DsrRequest), [column_values(new)])
        _store_identities(session, keyring, request_id, submission.identities)
        # received, then moved on at once: on PostgreSQL the database checks the move
        # against the operator's roles (migration 0002); both events in one statement
        request = transition(
            session, request_id, event, actor=operator, now=now, before=[submitted]
        )
    if request.status == RequestStatus.QUEUED:
        dispatch_quietly(dispatcher, request_id)
    return request


def _subject(key: bytes, submission: Submission) -> str:
    """The pseudonym the request's subject is known by: that of its contact, if any."""
    contact = contact_of(submission)
    if contact is None:
        return subject_pseudonym(key, submission.identities)
    return pseudonym(key, contact)


def contact_of(submission: Submission) -> Identity | None:
    """The email address the subject is written to (module docstring); None: the
    request has no email, or (a retention sweep's) several and no contact named."""
    emails = [i for i in submission.identities if i.type == IdentityType.EMAIL]
    if submission.contact is not None:
        if submission.contact not in emails:
            raise ValidationError(
                "--contact must be one of the request's email addresses; give it with --email too"
            )
        return submission.contact
    if len(emails) > 1 and submission.origin is None:
        raise ValidationError(
            f"{len(emails)} email addresses given and only one may be written to;"
            " name it with --contact (one of the --email values)"
        )
    return emails[0] if len(emails) == 1 else None


def _new_request(
    request_id: uuid.UUID, sub: Submission, subject: str, operator: str, now: datetime
) -> DsrRequest:
    return DsrRequest(
        id=request_id,
        kind=sub.kind.value,
        status=RequestStatus.RECEIVED.value,
        subject=subject,
        ticket=sub.ticket,
        note=sub.note,
        submitted_by=operator,
        submitted_at=now,
        due_at=add_months(now, defaults.DUE_MONTHS),
        extended_months=0,
        updated_at=now,
        attempts=0,
        dry_run=sub.dry_run,
        origin=sub.origin,
        notify=sub.notify,
    )


def _store_identities(
    session: Session, keyring: Keyring, request_id: uuid.UUID, identities: Identities
) -> None:
    rows = [
        column_values(sealed_identity(keyring, request_id, identity, discovered=False))
        for identity in identities
    ]
    if rows:
        session.execute(insert(DsrIdentity), rows)


def _types(submission: Submission) -> list[str]:
    return sorted(submission.identities.types())


def _submit_details(submission: Submission) -> dict[str, object]:
    """The submit event's details: the kind, identity types (never values) and the
    operator's verification note (checked for personal data above)."""
    details: dict[str, object] = {
        "kind": submission.kind.value,
        "identity_types": _types(submission),
    }
    if submission.dry_run:
        details["dry_run"] = True
    if submission.note:
        details["note"] = submission.note
    return details


def _first_event(settings: Settings, submission: Submission) -> Event:
    """Dry runs change nothing, so they need no approval; exports may be auto-approved;
    a retention policy's erasures were approved with the manifest that declares it."""
    if submission.dry_run or submission.pre_approved:
        return Event.AUTO_APPROVE
    if submission.kind == RequestKind.EXPORT and settings.auto_approve_exports:
        return Event.AUTO_APPROVE
    return Event.AWAIT_APPROVAL


def approve(
    db: Database,
    settings: Settings,
    request_id: uuid.UUID,
    *,
    operator: str,
    now: datetime,
    dispatcher: Dispatcher,
) -> DsrRequest:
    """Approve a request awaiting approval; four-eyes: not by the operator who submitted it."""
    with db.session() as session:
        request = get_request(session, request_id)
        waiting = request.status == RequestStatus.AWAITING_APPROVAL  # else: the state refuses
        own = waiting and settings.four_eyes and same_operator(request.submitted_by, operator)
        if not own:
            request = _approve(session, request_id, operator, now)
    if own:
        _refuse_own_approval(db, request_id, operator, now)
    dispatch_quietly(dispatcher, request_id)
    return request


def _refuse_own_approval(db: Database, request_id: uuid.UUID, operator: str, now: datetime) -> None:
    """Record the refusal (`operator.refused`), then raise it (four-eyes)."""
    with db.session() as session:
        details = {"action": "approve erasures", "reason": "four-eyes"}
        audit.record(
            session, actor=operator, action=REFUSED, now=now, request_id=request_id, details=details
        )
    raise PermissionDeniedError(
        f"{operator} submitted request {request_id} and cannot also approve it;"
        " ask a second operator (four-eyes)"
    )


def _approve(session: Session, request_id: uuid.UUID, operator: str, now: datetime) -> DsrRequest:
    return transition(
        session,
        request_id,
        Event.APPROVE,
        actor=operator,
        now=now,
        values={"approved_by": operator, "approved_at": now},
    )


def reject(
    db: Database, request_id: uuid.UUID, *, operator: str, reason: str, now: datetime
) -> DsrRequest:
    _require_reason(reason)
    with db.session() as session:
        request = transition(
            session,
            request_id,
            Event.REJECT,
            actor=operator,
            now=now,
            values={"last_error": None},
            details={"reason": reason},
        )
        request.note = _append_note(request.note, f"rejected: {reason}")
        wipe_identities(session, request_id)
        return request


def cancel(
    db: Database, request_id: uuid.UUID, *, operator: str, now: datetime, reason: str | None = None
) -> DsrRequest:
    with db.session() as session:
        details = {"reason": reason} if reason else {}
        request = transition(
            session, request_id, Event.CANCEL, actor=operator, now=now, details=details
        )
        if reason:
            request.note = _append_note(request.note, f"cancelled: {reason}")
        wipe_identities(session, request_id)
        _revoke_links(session, request_id, now)
        return request


def _revoke_links(session: Session, request_id: uuid.UUID, now: datetime) -> None:
    """A cancelled (given-up) export must not stay downloadable."""
    session.execute(
        update(DownloadLink)
        .where(DownloadLink.request_id == request_id, DownloadLink.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def retry(
    db: Database, request_id: uuid.UUID, *, operator: str, now: datetime, dispatcher: Dispatcher
) -> DsrRequest:
    """Put a failed request back in the queue; completed steps are not run again."""
    with db.session() as session:
        request = transition(session, request_id, Event.RETRY, actor=operator, now=now)
        session.execute(
            update(DsrStep)
            .where(DsrStep.request_id == request_id, DsrStep.status == "failed")
            .values(status="pending", error=None)
        )
    dispatch_quietly(dispatcher, request_id)
    return request


def extend(
    db: Database,
    request_id: uuid.UUID,
    *,
    months: int,
    reason: str,
    operator: str,
    now: datetime,
) -> DsrRequest:
    """Art. 12(3): extend the deadline by up to two further months in total, with a reason."""
    _require_reason(reason)
    with db.session() as session:
        request = get_request(session, request_id, for_update=True)
        _check_extension(request, months)
        total = request.extended_months + months
        request.due_at = add_months(request.due_at, months)
        request.extended_months = total
        request.extension_reason = _append_note(request.extension_reason, reason)
        request.updated_at = now
        audit.record(
            session,
            actor=operator,
            action="request.extend",
            now=now,
            request_id=request_id,
            subject=request.subject,
            details={"months": months, "due_at": request.due_at.isoformat(), "reason": reason},
        )
        return request


def _check_extension(request: DsrRequest, months: int) -> None:
    """Refuse extending a finished request (4), one already extended to the limit (4), or
    by more months than are left (2: ask for fewer)."""
    if RequestStatus(request.status) in FINAL:
        raise StateError(
            f"request {request.id} is {request.status}; only an open request can be extended"
        )
    most = defaults.MAX_EXTENSION_MONTHS
    left = most - request.extended_months
    if left <= 0:
        raise StateError(
            f"request {request.id} is already extended by the most allowed, {most} months"
        )
    if months < 1 or months > left:
        already = f"it is already extended by {request.extended_months}; " if left < most else ""
        raise ValidationError(
            f"request {request.id} can be extended by at most {_months(left)} more"
            f" ({already}Art. 12(3) allows {_months(most)} in all); pass --months {left}"
        )


def _months(count: int) -> str:
    return f"{count} month" if count == 1 else f"{count} months"


def _require_reason(reason: str) -> None:
    if not reason or not reason.strip():
        raise ValidationError("a reason is required; pass --reason '...'")
    check_text("reason", reason, MAX_NOTE)


def _append_note(existing: str | None, line: str) -> str:
    return f"{existing}\n{line}" if existing else line
