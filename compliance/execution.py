"""What a worker needs to run one request, and durable per-source steps.

A runner (`compliance.erasure.run_erasure`, `exporters.job.run_export`) receives a
`RunContext`, does its work source by source, and records progress in `dsr_step` rows so
a killed worker resumes where it stopped: a step that is `done` is never run again, and a
step's `checkpoint` is where its next chunk starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import LeaseHeldError
from compliance.identities import Identities
from compliance.keyring import Keyring
from compliance.models import DsrRequest, DsrStep, RequestStatus, StepStatus
from compliance.sources.base import DataSource


@dataclass(frozen=True)
class RunContext:
    """Everything a runner may use; built by the worker, passed down explicitly."""

    settings: Settings
    db: Database
    keyring: Keyring
    sources: Sequence[DataSource]
    request_id: uuid.UUID
    subject: str  # pseudonym of the data subject
    identities: Identities  # the identities given at submission (decrypted)
    dry_run: bool = False
    clock: Callable[[], datetime] = utcnow
    actor: str = "worker"
    claim: int | None = None  # the attempt number this run claimed; heartbeats check it
    notify: bool = True  # email the subject (retention erasures: only if configured)


def ensure_step(session: Session, request_id: uuid.UUID, source: str, action: str) -> DsrStep:
    """The step row for (request, source, action), created pending if missing."""
    step = session.scalars(
        select(DsrStep).where(
            DsrStep.request_id == request_id, DsrStep.source == source, DsrStep.action == action
        )
    ).one_or_none()
    if step is None:
        step = DsrStep(
            request_id=request_id,
            source=source,
            action=action,
            status=StepStatus.PENDING,
            counts={},
            checkpoint={},
            attempts=0,
        )
        session.add(step)
        session.flush()
    return step


def load_step(ctx: RunContext, source: str, action: str) -> DsrStep:
    """Fetch (or create) a step and mark it running; counts one more attempt."""
    with ctx.db.session() as session:
        step = ensure_step(session, ctx.request_id, source, action)
        if step.status != StepStatus.DONE:
            step.status = StepStatus.RUNNING
            step.attempts += 1
            step.started_at = step.started_at or ctx.clock()
            step.error = None
        return step


def save_progress(
    ctx: RunContext,
    step_id: int,
    *,
    checkpoint: Mapping[str, Any],
    add_counts: Mapping[str, int] | None = None,
    done: bool = False,
) -> None:
    """Persist a checkpoint (and counts) after a chunk committed at its source."""
    with ctx.db.session() as session:
        step = session.get_one(DsrStep, step_id)
        step.checkpoint = dict(checkpoint)
        counts = dict(step.counts or {})
        for key, value in (add_counts or {}).items():
            counts[key] = counts.get(key, 0) + value
        step.counts = counts
        if done:
            step.status = StepStatus.DONE
            step.finished_at = ctx.clock()
        heartbeat(session, ctx)


def heartbeat(session: Session, ctx: RunContext) -> None:
    """Renew the run's lease (`lease_seconds` from now): while it lives, no other run
    takes the request over and the sweep leaves it alone.

    Raises `LeaseHeldError` when this run no longer holds the claim (its lease expired and
    another run took over): the run must stop before doing more side effects.
    """
    query = update(DsrRequest).where(
        DsrRequest.id == ctx.request_id, DsrRequest.status == RequestStatus.RUNNING
    )
    if ctx.claim is not None:
        query = query.where(DsrRequest.attempts == ctx.claim)
    now = ctx.clock()
    lease = now + timedelta(seconds=ctx.settings.lease_seconds)
    result = session.execute(query.values(updated_at=now, lease_until=lease))
    if ctx.claim is not None and result.rowcount == 0:  # type: ignore[attr-defined]
        raise LeaseHeldError(
            f"request {ctx.request_id} was handed to another run; this run stops here"
        )


def pulse(ctx: RunContext, every: float | None = None) -> Callable[[], None]:
    """A heartbeat for work that records no checkpoints (an export streaming its package):
    call it as often as you like; it renews the lease at most once per `every` seconds
    (default: a third of the lease)."""
    every = ctx.settings.lease_seconds / 3 if every is None else every
    last: list[datetime] = []

    def beat() -> None:
        now = ctx.clock()
        if last and (now - last[0]).total_seconds() < every:
            return
        last[:] = [now]
        with ctx.db.session() as session:
            heartbeat(session, ctx)

    return beat


def set_counts(ctx: RunContext, step_id: int, counts: Mapping[str, Any], done: bool) -> None:
    """Replace a step's counts (for steps whose counts are not cumulative, e.g. verify)."""
    with ctx.db.session() as session:
        step = session.get_one(DsrStep, step_id)
        step.counts = dict(counts)
        if done:
            step.status = StepStatus.DONE
            step.finished_at = ctx.clock()


def fail_step(ctx: RunContext, step_id: int, error: str) -> None:
    with ctx.db.session() as session:
        step = session.get_one(DsrStep, step_id)
        step.status = StepStatus.FAILED
        step.error = error[:2000]
