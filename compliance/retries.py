"""A request the worker could not start (a source unreachable while loading the sources):
it stays queued, with the reason, one more attempt counted and when it is tried next,
so `gdpr request list` and `show` say why it waits instead of showing a fresh request.

A run that meets a transient error after its claim is released by `compliance.worker`
and recorded the same way; this covers the time before a claim is possible.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update

from compliance import audit
from compliance.db import Database
from compliance.errors import IllegalTransitionError
from compliance.execution import MAX_ERROR
from compliance.lifecycle import Event, transition
from compliance.models import DsrRequest, RequestStatus
from compliance.worker import type_of

log = logging.getLogger("gdpr.retries")


def defer(
    db: Database,
    request_id: uuid.UUID,
    error: str,
    *,
    retry_in: float,
    now: datetime,
    claim: int | None = None,
    actor: str = "worker",
) -> bool:
    """Record that the request could not run now and is tried again in `retry_in` seconds.

    A queued request stays queued; one running under `claim` (its next chunk could not
    start) is released to the queue. A request in any other state, or claimed by another
    run, is left alone (False). `error` is an error message: it names sources, never
    identities."""
    retry_at = now + timedelta(seconds=retry_in)
    values: dict[str, object] = {"last_error": error[:MAX_ERROR], "retry_at": retry_at}
    if claim is not None:
        return _release(db, request_id, error, values, claim=claim, actor=actor, now=now)
    with db.session() as session:
        changed = session.execute(
            update(DsrRequest)
            .where(DsrRequest.id == request_id, DsrRequest.status == RequestStatus.QUEUED)
            .values(**values, attempts=DsrRequest.attempts + 1, updated_at=now)
            .returning(DsrRequest.subject)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if changed is None:
            return False
        audit.record(
            session,
            actor=actor,
            action="request.defer",
            now=now,
            request_id=request_id,
            subject=changed,
            details={"error": type_of(error), "retry_at": retry_at.isoformat()},
        )
    log.warning("dsr.run.deferred", extra={"request_id": str(request_id), "error": type_of(error)})
    return True


def _release(
    db: Database,
    request_id: uuid.UUID,
    error: str,
    values: dict[str, object],
    *,
    claim: int,
    actor: str,
    now: datetime,
) -> bool:
    try:
        with db.session() as session:
            transition(
                session,
                request_id,
                Event.RELEASE,
                actor=actor,
                now=now,
                values={**values, "lease_until": None},
                details={"error": type_of(error)},
                claim=claim,
            )
    except IllegalTransitionError:
        return False
    return True
