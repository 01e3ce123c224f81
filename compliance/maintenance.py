"""Periodic sweeps that keep requests moving: nothing is lost between database and broker.

- `redispatch_queued`: requests queued for longer than a minute are dispatched again
  (the dispatch after commit may have failed, or the broker lost the message).
- `release_stale_claims`: requests `running` whose lease expired (a killed worker, a lost
  continuation message) go back to `queued` and are dispatched; their steps resume from
  their checkpoints.
- Requests released in retry backoff (`retry_at` in the future) are left to their retry.
- `resume_released`: legal holds past their end date are released, and erasures waiting
  `on_hold` whose holds all ended are queued again to erase what was held.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from compliance import holds
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import Dispatcher, dispatch_quietly
from compliance.errors import IllegalTransitionError
from compliance.lifecycle import Event, transition
from compliance.models import DsrRequest, RequestStatus
from compliance.worker import lease_expired

SWEEP_LIMIT = 500
ACTOR = "maintenance"


@dataclass(frozen=True)
class SweepResult:
    released: list[uuid.UUID]
    redispatched: list[uuid.UUID]
    resumed: list[uuid.UUID] = field(default_factory=list)
    expired_holds: list[int] = field(default_factory=list)


def sweep(db: Database, settings: Settings, dispatcher: Dispatcher, now: datetime) -> SweepResult:
    """Release stale claims and dispatch them at once, then re-dispatch old queued requests;
    end expired holds and resume the erasures they kept waiting."""
    released = release_stale_claims(db, settings, now)
    sent = [request_id for request_id in released if dispatch_quietly(dispatcher, request_id)]
    sent += [r for r in redispatch_queued(db, settings, dispatcher, now) if r not in sent]
    expired = holds.expire(db, now)
    resumed = resume_released(db, dispatcher, now)
    return SweepResult(released, sent, resumed, expired)


def resume_released(
    db: Database, dispatcher: Dispatcher, now: datetime, actor: str = ACTOR
) -> list[uuid.UUID]:
    """Queue again the erasures on hold whose holds have all ended (released or expired);
    a hold that still applies, or a new one, puts them back on hold when they run.
    `actor` is who resumes them: the sweep, or the admin who released the hold."""
    with db.session() as session:
        live = {h.id for h in holds.active(session, now)}
        waiting = session.execute(
            select(DsrRequest.id, DsrRequest.receipt).where(
                DsrRequest.status == RequestStatus.ON_HOLD
            )
        ).all()
    resumed = []
    for request_id, receipt in waiting:
        if held_by(receipt) & live:
            continue
        try:
            with db.session() as session:
                transition(
                    session,
                    request_id,
                    Event.RESUME,
                    actor=actor,
                    now=now,
                    values={"last_error": None},
                )
        except IllegalTransitionError:
            continue  # cancelled or resumed meanwhile
        dispatch_quietly(dispatcher, request_id)
        resumed.append(request_id)
    return resumed


def held_by(receipt: Mapping[str, Any] | None) -> set[int]:
    """The ids of the holds a receipt says keep part of the subject's data."""
    return {
        int(h["hold"]) for entry in (receipt or {}).get("held", []) for h in entry.get("holds", [])
    }


def redispatch_queued(
    db: Database, settings: Settings, dispatcher: Dispatcher, now: datetime
) -> list[uuid.UUID]:
    cutoff = now - timedelta(seconds=settings.redispatch_after_seconds)
    with db.session() as session:
        ids = session.scalars(
            select(DsrRequest.id)
            .where(
                DsrRequest.status == RequestStatus.QUEUED,
                DsrRequest.updated_at < cutoff,
                or_(DsrRequest.retry_at.is_(None), DsrRequest.retry_at <= now),
            )
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
    expired = lease_expired(now, settings.lease_seconds)
    with db.session() as session:
        ids = session.scalars(
            select(DsrRequest.id)
            .where(DsrRequest.status == RequestStatus.RUNNING, expired)
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
                    values={
                        "last_error": "lease expired (worker lost); resuming",
                        "lease_until": None,
                    },
                    where=[expired],  # no heartbeat since the select
                )
            released.append(request_id)
        except IllegalTransitionError:
            continue  # finished meanwhile
    return released
