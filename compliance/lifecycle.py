"""The request state machine: one explicit transition table, atomic conditional updates.

Every status change goes through `transition`, which runs
``UPDATE dsr_request SET status = :to ... WHERE id = :id AND status IN (:allowed)`` and
writes an audit event in the same transaction. If no row changed, the request is missing
or in a state the table does not allow; the error names the current state.

    received -> awaiting_approval -> queued -> running -> completed
                    |                   |         |-> failed -> queued (retry)
                    |-> rejected        |         |-> on_hold -> queued (hold released)
                                        |-> cancelled (never while running)

An erasure that meets a legal hold erases everything else and waits `on_hold`, its
identities still sealed, until the hold is released or expires; then it is queued again
and erases what was held.

A failed request may also be cancelled (given up): otherwise nothing would ever close it,
and its sealed identities would stay in the control database for good.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Update, bindparam, select, update
from sqlalchemy.orm import Session

from compliance import audit
from compliance.errors import IllegalTransitionError, NotFoundError
from compliance.models import DsrRequest
from compliance.models import RequestStatus as S


class Event(StrEnum):
    """What happens to a request; each maps to one row of the transition table."""

    AWAIT_APPROVAL = "await_approval"
    AUTO_APPROVE = "auto_approve"
    APPROVE = "approve"
    REJECT = "reject"
    CANCEL = "cancel"
    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL = "fail"
    RELEASE = "release"  # a running claim handed back to the queue (transient error, stale)
    RETRY = "retry"
    TAKEOVER = "takeover"  # a new run takes a running request whose lease expired
    HOLD = "hold"  # erased but for what a legal hold keeps
    RESUME = "resume"  # the hold was released: erase the rest


@dataclass(frozen=True)
class Transition:
    sources: frozenset[S]
    target: S


TRANSITIONS: Mapping[Event, Transition] = {
    Event.AWAIT_APPROVAL: Transition(frozenset({S.RECEIVED}), S.AWAITING_APPROVAL),
    Event.AUTO_APPROVE: Transition(frozenset({S.RECEIVED}), S.QUEUED),
    Event.APPROVE: Transition(frozenset({S.AWAITING_APPROVAL}), S.QUEUED),
    Event.REJECT: Transition(frozenset({S.RECEIVED, S.AWAITING_APPROVAL}), S.REJECTED),
    Event.CANCEL: Transition(
        frozenset({S.RECEIVED, S.AWAITING_APPROVAL, S.QUEUED, S.FAILED, S.ON_HOLD}), S.CANCELLED
    ),
    Event.CLAIM: Transition(frozenset({S.QUEUED}), S.RUNNING),
    Event.COMPLETE: Transition(frozenset({S.RUNNING}), S.COMPLETED),
    Event.FAIL: Transition(frozenset({S.RUNNING}), S.FAILED),
    Event.RELEASE: Transition(frozenset({S.RUNNING}), S.QUEUED),
    Event.RETRY: Transition(frozenset({S.FAILED}), S.QUEUED),
    Event.TAKEOVER: Transition(frozenset({S.RUNNING}), S.RUNNING),
    Event.HOLD: Transition(frozenset({S.RUNNING}), S.ON_HOLD),
    Event.RESUME: Transition(frozenset({S.ON_HOLD}), S.QUEUED),
}

NEXT_ATTEMPT = DsrRequest.attempts + 1  # `values={"attempts": NEXT_ATTEMPT}`: a new claim

FINAL = frozenset({S.COMPLETED, S.REJECTED, S.CANCELLED})
OPEN = frozenset(S) - FINAL  # still to be done (failed and on_hold included)

_TIMESTAMP_ON_ENTRY = {
    S.QUEUED: "queued_at",
    S.RUNNING: "started_at",
    S.COMPLETED: "completed_at",
}


def transition(
    session: Session,
    request_id: uuid.UUID,
    event: Event,
    *,
    actor: str,
    now: datetime,
    values: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    claim: int | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    before: Sequence[audit.Pending] = (),
) -> DsrRequest:
    """Apply `event` atomically; raise if the request is missing or in the wrong state.

    `claim` (the `attempts` value a worker's claim set) makes the update apply only while
    that claim is still the current one: a worker whose claim went stale and was taken
    over by another cannot finish or release the newer run. `where` adds conditions that
    must still hold at the moment of the update (e.g. that a claim is still stale).
    `before` are audit events about what led here (a run's last steps), appended just
    ahead of the transition's own, in the same statement.
    """
    rule = TRANSITIONS[event]
    changes = _changes(rule, now, values)
    statement, params = _update(event, request_id, changes, claim, where)
    # one round trip: the changed row comes back with the update
    request: DsrRequest | None = session.scalars(statement, params).one_or_none()
    if request is None:
        raise _refusal(session, request_id, event, rule)
    own = _note(event, request, actor, now, details)
    audit.append(session, [*before, own])
    return request


def transition_many(
    session: Session,
    request_ids: Sequence[uuid.UUID],
    event: Event,
    *,
    actor: str,
    now: datetime,
    values: Mapping[str, Any] | None = None,
) -> list[DsrRequest]:
    """`transition` of several requests in one UPDATE and one audit append (an event
    each, in the order of `request_ids`). Only those in a state `event` allows move;
    the others are left as they are and not returned, so a caller that needs them all
    holds their rows locked (``SELECT ... FOR UPDATE``) first."""
    if not request_ids:
        return []
    rule = TRANSITIONS[event]
    changes = _changes(rule, now, values)
    statement = _returning(
        update(DsrRequest)
        .where(DsrRequest.id.in_(list(request_ids)), *_status_in(rule))
        .values(**changes)
    )
    moved = {request.id: request for request in session.scalars(statement)}
    requests = [moved[request_id] for request_id in request_ids if request_id in moved]
    audit.append(session, [_note(event, request, actor, now, None) for request in requests])
    return requests


def _changes(rule: Transition, now: datetime, values: Mapping[str, Any] | None) -> dict[str, Any]:
    changes: dict[str, Any] = {"status": rule.target.value, "updated_at": now, **(values or {})}
    if rule.target in _TIMESTAMP_ON_ENTRY:
        changes.setdefault(_TIMESTAMP_ON_ENTRY[rule.target], now)
    return changes


def _note(
    event: Event,
    request: DsrRequest,
    actor: str,
    now: datetime,
    details: Mapping[str, Any] | None,
) -> audit.Pending:
    """The audit event of `event` moving `request`."""
    return audit.Pending(
        actor=actor,
        action=f"request.{event.value}",
        at=now,
        request_id=request.id,
        subject=request.subject,
        details={"to": TRANSITIONS[event].target.value, **(details or {})},
    )


def _update(
    event: Event,
    request_id: uuid.UUID,
    changes: Mapping[str, Any],
    claim: int | None,
    where: Sequence[ColumnElement[bool]],
) -> tuple[Update, dict[str, Any]]:
    """The conditional UPDATE and its parameters: a statement built once per shape
    (event, columns set, claim or not) and reused, unless it carries conditions or SQL
    expressions of its caller's (`where`, values other than `NEXT_ATTEMPT`)."""
    binds = {k: v for k, v in changes.items() if not isinstance(v, ColumnElement)}
    expressions = {k: v for k, v in changes.items() if k not in binds}
    if where or any(v is not NEXT_ATTEMPT for v in expressions.values()):
        conditions = [DsrRequest.id == request_id, *_status_in(TRANSITIONS[event]), *where]
        if claim is not None:
            conditions.append(DsrRequest.attempts == claim)
        statement = _returning(update(DsrRequest).where(*conditions).values(**changes))
        return statement, {}
    shape = _shaped(event, tuple(sorted(binds)), tuple(sorted(expressions)), claim is not None)
    params = {f"v_{name}": value for name, value in binds.items()}
    params["w_id"] = request_id
    if claim is not None:
        params["w_claim"] = claim
    return shape, params


@lru_cache(maxsize=256)
def _shaped(
    event: Event, binds: tuple[str, ...], next_attempt: tuple[str, ...], claimed: bool
) -> Update:
    columns = DsrRequest.__table__.c
    values: dict[str, Any] = {
        name: bindparam(f"v_{name}", type_=columns[name].type) for name in binds
    }
    values.update({name: NEXT_ATTEMPT for name in next_attempt})
    conditions = [DsrRequest.id == bindparam("w_id"), *_status_in(TRANSITIONS[event])]
    if claimed:
        conditions.append(DsrRequest.attempts == bindparam("w_claim"))
    return _returning(update(DsrRequest).where(*conditions).values(**values))


def _status_in(rule: Transition) -> list[ColumnElement[bool]]:
    allowed = sorted(s.value for s in rule.sources)
    if len(allowed) == 1:
        return [DsrRequest.status == allowed[0]]
    return [DsrRequest.status.in_(allowed)]


def _returning(statement: Update) -> Update:
    return statement.returning(DsrRequest).execution_options(
        synchronize_session=False, populate_existing=True
    )


def _refusal(session: Session, request_id: uuid.UUID, event: Event, rule: Transition) -> Exception:
    current = session.scalar(select(DsrRequest.status).where(DsrRequest.id == request_id))
    if current is None:
        return NotFoundError(f"no request with id {request_id}; list them with `gdpr request list`")
    allowed = ", ".join(sorted(s.value for s in rule.sources))
    if current in {s.value for s in rule.sources}:
        return IllegalTransitionError(
            f"cannot {event.value.replace('_', ' ')} request {request_id}: it changed"
            " meanwhile (another worker took over its claim, or it made progress)"
        )
    return IllegalTransitionError(
        f"cannot {event.value.replace('_', ' ')} request {request_id}: it is {current}"
        f" (allowed from: {allowed})"
    )
