"""Reading requests: fetch one, list them, show one with its steps, describe for output.

Everything here is PII-free: requests carry pseudonyms, and identities are shown by type.
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


def describe(request: DsrRequest, steps: Sequence[DsrStep] = ()) -> dict[str, Any]:
    """A JSON-ready, PII-free view of a request."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(request.id),
        "kind": request.kind,
        "status": request.status,
        "subject": request.subject,
        "ticket": request.ticket,
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
