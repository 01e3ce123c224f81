"""Reading requests: fetch one, list them, show one with its steps, describe for output.

`describe` also says what support staff need first: the request's current trouble
(retrying and why, failed, on hold) and the next step, if someone has to take one.

Everything here is PII-free: requests carry pseudonyms, identities are shown by type,
and operator text (tickets, notes, reasons) is checked for personal data at input.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from compliance.db import Database
from compliance.errors import NotFoundError, ValidationError
from compliance.lifecycle import OPEN
from compliance.models import DsrIdentity, DsrRequest, DsrStep, RequestStatus


def get_request(session: Session, request_id: uuid.UUID, *, for_update: bool = False) -> DsrRequest:
    query = select(DsrRequest).where(DsrRequest.id == request_id)
    if for_update:
        query = query.with_for_update()
    request = session.scalars(query).one_or_none()
    if request is None:
        raise NotFoundError(f"no request with id {request_id}; list them with `gdpr request list`")
    return request


def list_requests(
    db: Database,
    *,
    now: datetime,
    status: str | None = None,
    overdue: bool = False,
    limit: int = 200,
) -> Sequence[DsrRequest]:
    query = select(DsrRequest).order_by(DsrRequest.submitted_at.desc()).limit(limit)
    if status:
        if status not in {s.value for s in RequestStatus}:
            known = ", ".join(s.value for s in RequestStatus)
            raise ValidationError(f"unknown status {status!r}; use one of {known}")
        query = query.where(DsrRequest.status == status)
    if overdue:
        open_states = [s.value for s in OPEN]
        query = query.where(DsrRequest.due_at < now, DsrRequest.status.in_(open_states))
    with db.session() as session:
        return session.scalars(query).all()


def show(db: Database, request_id: uuid.UUID) -> tuple[DsrRequest, list[DsrStep], list[str]]:
    """A request, its steps and its identity types (never values)."""
    with db.session() as session:
        request = get_request(session, request_id)
        steps = session.scalars(
            select(DsrStep).where(DsrStep.request_id == request_id).order_by(DsrStep.id)
        ).all()
        types = session.scalars(
            select(DsrIdentity.type).where(DsrIdentity.request_id == request_id)
        ).all()
        return request, list(steps), sorted(set(types))


def describe(
    request: DsrRequest, steps: Sequence[DsrStep] = (), *, now: datetime | None = None
) -> dict[str, Any]:
    """A JSON-ready, PII-free view of a request; `now` makes the next retry relative."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(request.id),
        "kind": request.kind,
        "status": request.status,
        "subject": request.subject,
        "ticket": request.ticket,
        "note": request.note,
        "extension_reason": request.extension_reason,
        "submitted_by": request.submitted_by,
        "submitted_at": iso(request.submitted_at),
        "due_at": iso(request.due_at),
        "extended_months": request.extended_months,
        "approved_by": request.approved_by,
        "approved_at": iso(request.approved_at),
        "started_at": iso(request.started_at),
        "completed_at": iso(request.completed_at),
        "attempts": request.attempts,
        "last_error": request.last_error,
        "retry_at": iso(request.retry_at),
        "trouble": trouble(request, now),
        "next": next_steps(request),
        "dry_run": request.dry_run,
        "receipt": request.receipt,
        "steps": [
            {
                "source": s.source,
                "action": s.action,
                "status": s.status,
                "counts": s.counts,
                "attempts": s.attempts,
                "error": s.error,
            }
            for s in steps
        ],
    }


def trouble(request: DsrRequest, now: datetime | None = None) -> str | None:
    """What holds the request up, in one line: "retrying: <why> (attempt 4, next in 80 s)",
    "failed: <why>", "on hold: ..."; None when nothing does."""
    status = RequestStatus(request.status)
    if status == RequestStatus.FAILED:
        return f"failed: {request.last_error or 'no reason recorded'}"
    if status == RequestStatus.ON_HOLD:
        rest = "a dry run: nothing was changed" if request.dry_run else "the rest is erased"
        return f"on hold: {held_summary(request.receipt)}; {rest}"
    if not request.last_error or status not in {RequestStatus.QUEUED, RequestStatus.RUNNING}:
        return None
    if status == RequestStatus.RUNNING:
        return f"running again after: {request.last_error} (attempt {request.attempts})"
    return f"retrying: {request.last_error} (attempt {request.attempts}, {_when(request, now)})"


def _when(request: DsrRequest, now: datetime | None) -> str:
    if request.retry_at is None or (now is not None and request.retry_at <= now):
        return "retry due now"
    if now is None:
        return f"next at {request.retry_at:%H:%M:%S} UTC"
    seconds = round((request.retry_at - now).total_seconds())
    return f"next in {seconds} s" if seconds < 120 else f"next in {round(seconds / 60)} min"


def held_summary(receipt: dict[str, Any] | None) -> str:
    """`shop by legal hold 3 (Art. 17(3)(e) ...)`, per source a receipt says is held."""
    parts = []
    for entry in (receipt or {}).get("held", []):
        holds = ", ".join(
            f"legal hold {h['hold']} ({h['legal_basis']})" for h in entry.get("holds", [])
        )
        parts.append(f"{entry['source']} kept by {holds}")
    return "; ".join(parts) or "kept by a legal hold"


def next_steps(request: DsrRequest) -> list[str]:
    """What someone has to do next (commands to run), if anything."""
    rid = request.id
    status = RequestStatus(request.status)
    if status == RequestStatus.AWAITING_APPROVAL:
        return [f"a second operator approves: gdpr request approve {rid} (or reject it)"]
    if status == RequestStatus.FAILED:
        return [f"fix the cause, then: gdpr request retry {rid} (give up: gdpr request cancel)"]
    if status == RequestStatus.ON_HOLD:
        return ["it resumes by itself when the holds end: gdpr hold list"]
    if status != RequestStatus.COMPLETED:
        return []
    if request.dry_run:
        verb = "erase" if request.kind == "erasure" else "export"
        return [f"a dry run changed nothing: submit `gdpr request {verb}` without --dry-run"]
    delivery = (request.receipt or {}).get("delivery")
    if isinstance(delivery, dict) and delivery.get("next"):
        reason = delivery.get("reason", "the link was not mailed")
        return [f"{delivery['next']} and hand the link to the subject ({reason})"]
    return []
