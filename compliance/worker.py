"""Run one request on a worker: claim it, build its context, run it, record the outcome.

`execute` is what the Celery task calls. It is safe under at-least-once delivery: the
claim is an atomic `queued -> running` update, so a duplicate message finds the request
already claimed (or finished) and does nothing.

A claim is a lease (`lease_seconds`), renewed by the run's heartbeat. A message for a
request whose lease expired (its worker was killed, or only its pool child) takes it over
at once under a new claim, from its checkpoints; a message for one whose lease is still
alive is `BUSY` and comes back when the lease would have run out.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from compliance import audit
from compliance.coalesce import warmed
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import (
    IllegalTransitionError,
    RetryableError,
    TerminalError,
)
from compliance.execution import RunContext, StepLog, read_steps, read_steps_of
from compliance.identities import Identities
from compliance.keyring import Keyring
from compliance.lifecycle import NEXT_ATTEMPT, Event, transition, transition_many
from compliance.logs import bound_request, stack_summary
from compliance.models import DsrRequest, RequestKind, RequestStatus
from compliance.sealed import identities_in, identities_of, wipe_identities
from compliance.sources.base import DataSource
from compliance.sources.lookup import require_lookup

log = logging.getLogger("gdpr.worker")

LEASE_FOR_FAILING = 60.0  # a claim made only to record a failure
BATCH_RETRY_SECONDS = 5.0  # a batch's request released by a transient error: retried then

# A runner returns the receipt, or None when it stopped after a bounded chunk of work
# and wants to be called again (the worker re-enqueues the request under the same claim).
Runner = Callable[[RunContext], dict[str, Any] | None]
Continuation = Callable[[uuid.UUID, int], None]
_Run = tuple[RequestKind, RunContext]  # a claimed request's kind and its run's context


class Outcome(StrEnum):
    """What `execute` did with a request."""

    SKIPPED = "skipped"  # not claimable: already running, finished or cancelled
    COMPLETED = "completed"
    FAILED = "failed"
    CONTINUED = "continued"  # a chunk is done; the next one is queued under the same claim
    RELEASED = "released"  # a chunk is done but the next could not be queued: back to queued
    BUSY = "busy"  # another run holds a live lease: try again when it would have expired
    HELD = "held"  # erased but for what a legal hold keeps: waits until the hold ends


@dataclass(frozen=True)
class Worker:
    """The long-lived parts a worker process builds once."""

    settings: Settings
    db: Database
    keyring: Keyring
    sources: Sequence[DataSource]
    runners: dict[RequestKind, Runner]
    clock: Callable[[], datetime] = utcnow
    name: str = "worker"
    continuation: Continuation | None = None  # None: run every chunk in this call


def execute(
    worker: Worker, request_id: uuid.UUID, claim: int | None = None, *, retry_in: float = 0.0
) -> Outcome:
    """Claim and run one request (or, with `claim`, its next chunk under that claim).
    Raises `RetryableError` after releasing it to the queue, to be retried in `retry_in`
    seconds (the maintenance sweep leaves it alone until then).

    An export is claimed with up to `export_batch - 1` more queued exports, which run
    right after it (`compliance.coalesce`); a message whose request another run holds
    runs such a batch of what is queued instead of waiting idle."""
    if claim is not None:
        run = _resume(worker, request_id, claim)
        return Outcome.SKIPPED if run is None else _run(worker, run, retry_in)
    seen, batch = _claim(worker, request_id)
    if seen is not _Seen.CLAIMED:  # `batch` holds queued exports claimed instead
        busy = seen is _Seen.BUSY
        if seen is _Seen.CLAIMABLE:  # at the look, but another run claimed it first
            busy = _lease_alive(worker, request_id)
            batch = _claim_queued(worker, worker.settings.export_batch)
        _run_batch(worker, batch)
        return Outcome.BUSY if busy else Outcome.SKIPPED
    run = batch[0]
    if run[0] != RequestKind.EXPORT:
        return _run(worker, run, retry_in)
    with warmed(worker.sources, [ctx for _, ctx in batch]):
        try:
            return _run(worker, run, retry_in)
        finally:
            _run_rest(worker, batch[1:])


def _run_batch(worker: Worker, batch: Sequence[_Run]) -> None:
    """Run claimed exports one after the other, their reads shared."""
    if batch:
        with warmed(worker.sources, [ctx for _, ctx in batch]):
            _run_rest(worker, batch)


def _run_rest(worker: Worker, batch: Sequence[_Run]) -> None:
    """Run the batch's other requests, each on its own: whatever one of them does (fail,
    be released to retry, lose its claim) stays with it. Those still waiting have their
    leases renewed before each run, so no sweep takes them away meanwhile."""
    waiting = list(batch)
    while waiting:
        waiting = [run for run in waiting if _renewed(run[1])]
        if not waiting:
            return
        run = waiting.pop(0)
        with bound_request(run[1].request_id):
            try:
                _run(worker, run, BATCH_RETRY_SECONDS)
            except RetryableError:
                continue  # released to the queue: the sweep or its own message runs it


def _renewed(ctx: RunContext) -> bool:
    """Renew the lease when a third of it has passed; False when the claim was lost."""
    try:
        ctx.steps.beat()
    except RetryableError:
        log.warning("dsr.coalesce.lost_claim", extra={"request_id": str(ctx.request_id)})
        return False
    return True


def _run(worker: Worker, run: _Run, retry_in: float) -> Outcome:
    """Run a claimed request (one chunk of it, with a continuation) and record how it
    ended under its claim."""
    kind, ctx = run
    request_id = ctx.request_id
    log.info("dsr.run.started", extra={"request_id": str(request_id), "kind": kind})
    try:
        # The manifest may have changed since submission: a request no source can look
        # up would "complete" having found nothing, and tell the subject so.
        require_lookup(worker.sources, ctx.identities.types())
        runner = worker.runners[kind]
        receipt = runner(ctx)
        while receipt is None and worker.continuation is None:
            receipt = runner(ctx)
    except RetryableError as exc:
        later = {"retry_at": worker.clock() + timedelta(seconds=retry_in)}
        if not _finish(worker, ctx, Event.RELEASE, error=str(exc), values=later):
            return Outcome.SKIPPED  # the run that took over the claim carries on
        raise
    except TerminalError as exc:
        if not _finish(worker, ctx, Event.FAIL, error=str(exc)):
            return Outcome.SKIPPED
        return Outcome.FAILED
    except Exception as exc:  # never leave a request running because of a bug
        log.error(  # the place only: an exception's text may hold personal data
            "dsr.run.crashed", extra={"request_id": str(request_id), "trace": stack_summary(exc)}
        )
        error = f"internal error ({type(exc).__name__})"
        if not _finish(worker, ctx, Event.FAIL, error=error):
            return Outcome.SKIPPED
        return Outcome.FAILED
    if receipt is None:
        return _hand_over(worker, ctx)
    held = bool(receipt.get("held")) and not ctx.dry_run  # a dry run only reports holds
    event = Event.HOLD if held else Event.COMPLETE
    if not _finish(worker, ctx, event, receipt=receipt):
        return Outcome.SKIPPED
    log.info("dsr.run.held" if held else "dsr.run.completed", extra={"request_id": str(request_id)})
    return Outcome.HELD if held else Outcome.COMPLETED


def fail_unrunnable(
    db: Database,
    request_id: uuid.UUID,
    error: str,
    *,
    claim: int | None = None,
    actor: str = "worker",
    now: datetime,
) -> Outcome:
    """Fail a request this worker cannot run at all (its sources manifest is broken, say)
    with `error` as its `last_error`, instead of leaving it queued to fail again and again.

    A queued request is claimed first, so the trail reads like any failed run and a
    duplicate message finds it taken; with `claim`, the run under that claim is failed.
    A request that is not ours (finished, cancelled, claimed by another) is left alone.
    """
    if claim is None:
        with db.session() as session:
            request = _claim_in(session, request_id, actor, now, LEASE_FOR_FAILING)
        if request is None:
            return Outcome.SKIPPED
        claim = request.attempts
    if not _finish_in(db, request_id, claim, Event.FAIL, actor=actor, now=now, error=error):
        return Outcome.SKIPPED
    log.warning(
        "dsr.run.unrunnable", extra={"request_id": str(request_id), "error": type_of(error)}
    )
    return Outcome.FAILED


def _resume(worker: Worker, request_id: uuid.UUID, claim: int) -> _Run | None:
    """The run's context, if the request is still running under `claim` (else another
    run owns it), read in one transaction."""
    with worker.db.session() as session:
        request = session.get(DsrRequest, request_id)
        if request is None or request.status != RequestStatus.RUNNING:
            return None
        return _context(worker, session, request) if request.attempts == claim else None


def _hand_over(worker: Worker, ctx: RunContext) -> Outcome:
    """Queue the next chunk under the same claim (after saving the chunk's steps); if that
    fails, release the request so the maintenance sweep dispatches it again (its steps
    resume from their checkpoints)."""
    assert worker.continuation is not None and ctx.claim is not None
    if ctx.steps.pending:
        ctx.steps.save()  # the next chunk reads the steps afresh
    try:
        worker.continuation(ctx.request_id, ctx.claim)
    except Exception as exc:  # any broker error: nothing is lost, the sweep takes over
        error = f"next chunk could not be queued ({type(exc).__name__}); resuming later"
        _finish(worker, ctx, Event.RELEASE, error=error)
        return Outcome.RELEASED
    log.info("dsr.run.continued", extra={"request_id": str(ctx.request_id)})
    return Outcome.CONTINUED


class _Seen(StrEnum):
    """What a look at a request, without locking it, found."""

    CLAIMED = "claimed"  # by this message, just now
    CLAIMABLE = "claimable"  # queued, or running under a lease that ran out
    BUSY = "busy"  # running under another run's live lease
    CLOSED = "closed"  # anything else: finished, failed, waiting, or gone


_LOOK = select(DsrRequest.status, DsrRequest.lease_until, DsrRequest.updated_at).where(
    DsrRequest.id == bindparam("request_id")
)


def _seen(row: Row[str, datetime | None, datetime] | None, now: datetime, lease: float) -> _Seen:
    if row is None:
        return _Seen.CLOSED
    status, lease_until, updated_at = row
    if status == RequestStatus.QUEUED:
        return _Seen.CLAIMABLE
    if status != RequestStatus.RUNNING:
        return _Seen.CLOSED
    alive_until = lease_until or updated_at + timedelta(seconds=lease)
    return _Seen.BUSY if alive_until >= now else _Seen.CLAIMABLE


def _claim(worker: Worker, request_id: uuid.UUID) -> tuple[_Seen, list[_Run]]:
    """Claim a queued request, or take over a running one whose lease expired, with the
    run's context (identities, steps) read in the same transaction: one commit makes the
    claim durable before the run's first side effect. An export brings up to
    `export_batch - 1` more queued exports with it, claimed in the same transaction
    (`compliance.coalesce`); the request asked for comes first (`CLAIMED`).

    The request is looked at first, unlocked. Most messages of a busy queue find theirs
    already claimed with another's batch (`BUSY`), or done (`CLOSED`): the look then
    replaces a claim, a take-over and a lease check that would each be refused, and the
    message claims the queued exports instead. `CLAIMABLE` with nothing: claimable at
    the look, claimed by another run before this one.

    The context is read before the claim, so the audit chain's lock (taken by the
    claim's event) is held only until the commit. No step can change between that read
    and the claim: a run writes steps only in a transaction that also updates the
    request row under its own claim (a renewal, or its final transition). Committed
    before the claim's update, that leaves the request not claimable (a live lease, or
    no longer queued/running); committed after, it finds its claim gone and rolls back.
    """
    lease = worker.settings.lease_seconds
    now = worker.clock()
    with worker.db.session() as session:
        seen = _seen(session.execute(_LOOK, {"request_id": request_id}).one_or_none(), now, lease)
        if seen is not _Seen.CLAIMABLE:
            return seen, _claim_queued_in(worker, session, worker.settings.export_batch, now)
        identities = identities_in(session, worker.keyring, request_id)
        steps = read_steps(session, request_id)
        request = _claim_in(session, request_id, worker.name, now, lease)
        taken_over = request is None
        if request is None:
            request = _take_over(session, request_id, worker.name, now, lease)
        if request is None:
            return seen, []
        batch = [_context(worker, session, request, identities, steps)]
        if request.kind == RequestKind.EXPORT:
            more = worker.settings.export_batch - 1
            batch += _claim_queued_in(worker, session, more, now)
    if taken_over:
        log.warning("dsr.claim.taken_over", extra={"request_id": str(request_id)})
    return _Seen.CLAIMED, batch


def _claim_queued(worker: Worker, limit: int) -> list[_Run]:
    """Claim up to `limit` queued exports, oldest first, due now (not waiting out a
    retry), with their contexts, in one transaction; rows other workers are claiming
    are skipped, not waited for."""
    if limit <= 0:
        return []
    with worker.db.session() as session:
        return _claim_queued_in(worker, session, limit, worker.clock())


def _claim_queued_in(worker: Worker, session: Session, limit: int, now: datetime) -> list[_Run]:
    """The claim of `_claim_queued` in `session`: the rows locked, then claimed with one
    update and one audit append, and their contexts read in two statements."""
    if limit <= 0:
        return []
    ids = session.scalars(
        select(DsrRequest.id)
        .where(
            DsrRequest.status == RequestStatus.QUEUED,
            DsrRequest.kind == RequestKind.EXPORT,
            or_(DsrRequest.retry_at.is_(None), DsrRequest.retry_at <= now),
        )
        .order_by(DsrRequest.queued_at, DsrRequest.submitted_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not ids:
        return []
    identities = identities_of(session, worker.keyring, ids)
    steps = read_steps_of(session, ids)
    lease = worker.settings.lease_seconds
    claimed = transition_many(
        session, ids, Event.CLAIM, actor=worker.name, now=now, values=_claim_values(now, lease)
    )
    return [
        _context(worker, session, request, identities[request.id], steps[request.id])
        for request in claimed
    ]


def _claim_values(now: datetime, lease: float) -> dict[str, Any]:
    """What a claim sets besides the status: a new lease, one more attempt."""
    return {
        "lease_until": now + timedelta(seconds=lease),
        "retry_at": None,
        "attempts": NEXT_ATTEMPT,
    }


def _claim_in(
    session: Session, request_id: uuid.UUID, actor: str, now: datetime, lease: float
) -> DsrRequest | None:
    """`queued -> running` under a new claim (one more attempt), or None."""
    try:
        return transition(
            session,
            request_id,
            Event.CLAIM,
            actor=actor,
            now=now,
            values=_claim_values(now, lease),
        )
    except IllegalTransitionError:
        log.info("dsr.claim.skipped", extra={"request_id": str(request_id)})
        return None


def _take_over(
    session: Session, request_id: uuid.UUID, actor: str, now: datetime, lease: float
) -> DsrRequest | None:
    """A new claim on a running request whose lease expired (its run is gone); the old
    run's heartbeats fail from now on (the claim number changed)."""
    try:
        return transition(
            session,
            request_id,
            Event.TAKEOVER,
            actor=actor,
            now=now,
            values={
                "lease_until": now + timedelta(seconds=lease),
                "attempts": NEXT_ATTEMPT,
                "last_error": "lease expired (worker lost); taken over",
            },
            where=[lease_expired(now, lease)],
        )
    except IllegalTransitionError:
        return None


def lease_expired(now: datetime, lease: float) -> ColumnElement[bool]:
    """A running request whose lease ran out (rows claimed before leases existed: no
    heartbeat for a lease's length)."""
    return or_(
        DsrRequest.lease_until < now,
        and_(
            DsrRequest.lease_until.is_(None),
            DsrRequest.updated_at < now - timedelta(seconds=lease),
        ),
    )


def _lease_alive(worker: Worker, request_id: uuid.UUID) -> bool:
    """Another run holds a live lease on the request."""
    with worker.db.session() as session:
        request = session.get(DsrRequest, request_id)
        return (
            request is not None
            and request.status == RequestStatus.RUNNING
            and request.lease_until is not None
            and request.lease_until >= worker.clock()
        )


def _context(
    worker: Worker,
    session: Session,
    request: DsrRequest,
    identities: Identities | None = None,
    steps: Sequence[Row[Any]] | None = None,
) -> _Run:
    """The request's kind and the run's context, with its identities and its steps read
    in `session` (unless read there already)."""
    ctx = RunContext(
        settings=worker.settings,
        db=worker.db,
        keyring=worker.keyring,
        sources=worker.sources,
        request_id=request.id,
        subject=request.subject,
        identities=identities_in(session, worker.keyring, request.id)
        if identities is None
        else identities,
        dry_run=request.dry_run,
        clock=worker.clock,
        actor=worker.name,
        claim=request.attempts,
        notify=request.notify,
        kind=request.kind,
    )
    ctx.steps.load(session, steps)
    return RequestKind(request.kind), ctx


def _finish(
    worker: Worker,
    ctx: RunContext,
    event: Event,
    *,
    error: str | None = None,
    receipt: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Record the outcome of our claim, with the run's unsaved step changes; False if the
    claim was lost (released or taken)."""
    assert ctx.claim is not None
    return _finish_in(
        worker.db,
        ctx.request_id,
        ctx.claim,
        event,
        actor=worker.name,
        now=worker.clock(),
        error=error,
        receipt=receipt,
        values=values,
        steps=ctx.steps,
    )


def _finish_in(
    db: Database,
    request_id: uuid.UUID,
    claim: int,
    event: Event,
    *,
    actor: str,
    now: datetime,
    error: str | None = None,
    receipt: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    steps: StepLog | None = None,
) -> bool:
    values = {"last_error": error[:2000] if error else None, "lease_until": None, **(values or {})}
    if receipt is not None:
        values["receipt"] = receipt
    details = {"error": type_of(error)} if error else {}
    try:
        with db.session() as session:
            if event == Event.COMPLETE:
                wipe_identities(session, request_id)
            notes: list[audit.Pending] = []
            if steps is not None:
                steps.save(session, renew=False, notes=False)
                notes = steps.take_notes(session)  # appended with the transition's event
            # last: the audit chain's lock is held from here to the commit; if the claim
            # was lost, the transition refuses and the writes above roll back with it
            transition(
                session,
                request_id,
                event,
                actor=actor,
                now=now,
                values=values,
                details=details,
                claim=claim,
                before=notes,
            )
    except IllegalTransitionError:
        # The maintenance sweep released the claim meanwhile (and maybe another worker
        # claimed it): that run, or the next one, resumes from the durable steps.
        log.warning("dsr.finish.lost_claim", extra={"request_id": str(request_id)})
        return False
    return True


def type_of(error: str) -> str:
    """A short label for audit details (error messages may be long; they carry no PII)."""
    return error.split(":", 1)[0][:80]
