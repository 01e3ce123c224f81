"""Periodic sweeps that keep requests moving: nothing is lost between database and broker.

- `redispatch_queued`: requests queued for longer than a minute are dispatched again
  (the dispatch after commit may have failed, or the broker lost the message).
- `release_stale_claims`: requests `running` with no progress for `stale_claim_seconds`
  (a killed worker) go back to `queued`; their steps resume from their checkpoints.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import Dispatcher, dispatch_quietly
from compliance.errors import IllegalTransitionError
from compliance.lifecycle import Event, transition
from compliance.models import DsrRequest, RequestStatus

SWEEP_LIMIT = 500
ACTOR = "maintenance"


@dataclass(frozen=True)
class SweepResult:
    released: list[uuid.UUID]
    redispatched: list[uuid.UUID]


def sweep(db: Database, settings: Settings, dispatcher: Dispatcher, now: datetime) -> SweepResult:
    """Release stale claims and dispatch them at once, then re-dispatch old queued requests."""
    released = release_stale_claims(db, settings, now)
    sent = [request_id for request_id in released if dispatch_quietly(dispatcher, request_id)]
    sent += [r for r in redispatch_queued(db, settings, dispatcher, now) if r not in sent]
    return SweepResult(released, sent)


def redispatch_queued(
    db: Database, settings: Settings, dispatcher: Dispatcher, now: datetime
) -> list[uuid.UUID]:
    cutoff = now - timedelta(seconds=settings.redispatch_after_seconds)
    with db.session() as session:
        ids = session.scalars(
            select(DsrRequest.id)
            .where(DsrRequest.status == RequestStatus.QUEUED, DsrRequest.updated_at < cutoff)
            .order_by(DsrRequest.updated_at)
            .limit(SWEEP_LIMIT)
        ).all()
    sent = [request_id for request_id in ids if dispatch_quietly(dispatcher, request_id)]
    if sent:
        _touch(db, sent, now)
    return sent


def _touch(db: Database, ids: list[uuid.UUID], now: datetime) -> None:
    """Restart the redispatch clock so one sweep does not flood the broker."""
    with db.session() as session:
        session.execute(
            update(DsrRequest)
            .where(DsrRequest.id.in_(ids), DsrRequest.status == RequestStatus.QUEUED)
            .values(updated_at=now)
        )


def release_stale_claims(db: Database, settings: Settings, now: datetime) -> list[uuid.UUID]:
    cutoff = now - timedelta(seconds=settings.stale_claim_seconds)
    with db.session() as session:
        ids = session.scalars(
            select(DsrRequest.id)
            .where(DsrRequest.status == RequestStatus.RUNNING, DsrRequest.updated_at < cutoff)
            .limit(SWEEP_LIMIT)
        ).all()
    released = []
    for request_id in ids:
        try:
            with db.session() as session:
                transition(
                    session,
                    request_id,
                    Event.RELEASE,
                    actor=ACTOR,
                    now=now,
                    values={"last_error": "claim went stale (worker lost); resuming"},
                    where=[DsrRequest.updated_at < cutoff],  # no heartbeat since the select
                )
            released.append(request_id)
        except IllegalTransitionError:
            continue  # finished meanwhile
    return released
