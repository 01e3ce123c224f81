"""Coalesced exports on the worker (`compliance.coalesce`, `worker._claim`): queued exports
are claimed with the one asked for, each under its own claim and audit event, and run one
after the other; what one of them does (fail, be released to retry) stays with it."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.errors import SourceUnavailableError, ValidationError
from compliance.execution import RunContext
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.lifecycle import Event, transition
from compliance.models import AuditEvent, DsrRequest, RequestKind, RequestStatus
from compliance.requests import Submission, submit
from compliance.worker import Outcome, Runner, Worker, execute
from tests.compliance.helpers import NOW, answering, statements, submit_request


def make_worker(
    db: Database, settings: Settings, runner: Runner, *, batch: int = 16, clock: Any = None
) -> Worker:
    return Worker(
        settings=dataclasses.replace(settings, export_batch=batch),
        db=db,
        keyring=load_keyring(settings),
        sources=answering(),
        runners={RequestKind.EXPORT: runner, RequestKind.ERASURE: runner},
        clock=clock or (lambda: NOW),
    )


def statuses(db: Database) -> dict[Any, str]:
    with db.session() as session:
        return {r.id: r.status for r in session.scalars(select(DsrRequest))}


def claims(db: Database) -> dict[Any, int]:
    with db.session() as session:
        rows = session.scalars(
            select(AuditEvent.request_id).where(AuditEvent.action == "request.claim")
        )
        found: dict[Any, int] = {}
        for request_id in rows:
            found[request_id] = found.get(request_id, 0) + 1
        return found


def test_one_message_runs_the_queued_exports_each_under_its_own_claim(
    db: Database, settings: Settings
) -> None:
    created = [submit_request(db, settings, RequestKind.EXPORT) for _ in range(4)]
    ran: list[RunContext] = []

    def runner(ctx: RunContext) -> dict[str, Any]:
        ran.append(ctx)
        return {"sources": 0}

    assert execute(make_worker(db, settings, runner), created[2].id) == Outcome.COMPLETED
    assert ran[0].request_id == created[2].id  # the request asked for runs first
    assert sorted(str(c.request_id) for c in ran) == sorted(str(c.id) for c in created)
    assert set(statuses(db).values()) == {"completed"}
    assert claims(db) == {c.id: 1 for c in created}
    assert len({c.claim for c in ran}) == 1 and all(c.claim == 1 for c in ran)


def test_a_batch_is_bounded_and_never_takes_erasures(db: Database, settings: Settings) -> None:
    exports = [submit_request(db, settings, RequestKind.EXPORT) for _ in range(4)]
    erasure = submit_request(db, settings, RequestKind.ERASURE)
    with db.session() as session:  # approved by someone else: queued like the exports
        transition(session, erasure.id, Event.APPROVE, actor="bob", now=NOW)
    worker = make_worker(db, settings, lambda ctx: {}, batch=2)
    assert execute(worker, exports[0].id) == Outcome.COMPLETED
    found = statuses(db)
    assert sum(1 for e in exports if found[e.id] == "completed") == 2
    assert found[erasure.id] == "queued"
    assert execute(worker, erasure.id) == Outcome.COMPLETED  # an erasure runs alone
    assert sum(1 for e in exports if statuses(db)[e.id] == "completed") == 2


def test_a_failing_or_released_request_leaves_the_rest_of_its_batch_running(
    db: Database, settings: Settings
) -> None:
    created = [submit_request(db, settings, RequestKind.EXPORT) for _ in range(4)]
    bad, flaky = created[1].id, created[2].id

    def runner(ctx: RunContext) -> dict[str, Any]:
        if ctx.request_id == bad:
            raise ValidationError("this one cannot be exported")
        if ctx.request_id == flaky:
            raise SourceUnavailableError("source app unreachable; retry later")
        return {}

    assert execute(make_worker(db, settings, runner), created[0].id) == Outcome.COMPLETED
    found = statuses(db)
    assert found[bad] == "failed" and found[flaky] == "queued"
    assert found[created[0].id] == found[created[3].id] == "completed"
    with db.session() as session:
        released = session.get_one(DsrRequest, flaky)
        assert released.retry_at is not None and released.retry_at > NOW  # waits out a backoff


def test_a_message_whose_request_is_taken_runs_what_is_queued_instead_of_idling(
    db: Database, settings: Settings
) -> None:
    created = [submit_request(db, settings, RequestKind.EXPORT) for _ in range(3)]
    with db.session() as session:  # another worker holds the first, lease alive
        transition(
            session,
            created[0].id,
            Event.CLAIM,
            actor="other",
            now=NOW,
            values={"lease_until": NOW + timedelta(seconds=60), "attempts": 1},
        )
    assert execute(make_worker(db, settings, lambda ctx: {}), created[0].id) == Outcome.BUSY
    found = statuses(db)
    assert found[created[0].id] == RequestStatus.RUNNING
    assert found[created[1].id] == found[created[2].id] == "completed"


def test_requests_waiting_in_a_batch_have_their_leases_renewed(
    db: Database, settings: Settings
) -> None:
    created = [submit_request(db, settings, RequestKind.EXPORT) for _ in range(3)]
    now = [NOW]
    leases: list[datetime | None] = []

    def runner(ctx: RunContext) -> dict[str, Any]:
        with db.session() as session:
            leases.append(session.get_one(DsrRequest, ctx.request_id).lease_until)
        now[0] += timedelta(seconds=settings.lease_seconds * 0.6)  # a slow export
        return {}

    worker = make_worker(db, settings, runner, clock=lambda: now[0])
    assert execute(worker, created[0].id) == Outcome.COMPLETED
    assert set(statuses(db).values()) == {"completed"}
    # each waiting request's lease reached past the time its run began
    starts = [NOW + timedelta(seconds=settings.lease_seconds * 0.6 * i) for i in range(3)]
    assert all(
        lease is not None and lease > start for lease, start in zip(leases, starts, strict=True)
    )


def test_a_batch_is_claimed_in_one_update_and_a_taken_requests_message_only_looks(
    db: Database, settings: Settings
) -> None:
    created = [submit_request(db, settings, RequestKind.EXPORT) for _ in range(4)]
    worker = make_worker(db, settings, lambda ctx: {})
    taken: list[Any] = []

    def runner(ctx: RunContext) -> dict[str, Any]:
        if not taken:  # while the batch runs, the message of a request it claimed arrives
            with statements(db) as seen:
                taken.append(execute(worker, created[3].id))
            taken.append(seen)
        return {}

    worker = make_worker(db, settings, runner)
    with statements(db) as seen:
        assert execute(worker, created[0].id) == Outcome.COMPLETED
    claiming = [s for s in seen if s.lstrip().startswith("UPDATE dsr_request SET status")]
    assert len(claiming) == 1 + 1 + 4  # its own claim, the other three's, four completions
    assert set(statuses(db).values()) == {"completed"}
    assert claims(db) == {request.id: 1 for request in created}
    outcome, looked = taken
    assert outcome == Outcome.BUSY  # alive under the batch's lease: tried again after it
    assert not [s for s in looked if s.lstrip().startswith("UPDATE")]  # nothing refused
    assert looked.count("COMMIT") == 1


def test_each_request_of_a_batch_runs_with_its_own_identities_and_nobody_elses(
    db: Database, settings: Settings
) -> None:
    emails = {}
    for email in ("ada@example.com", "bob@example.com", "cy@example.com"):
        submission = Submission(
            kind=RequestKind.EXPORT,
            identities=Identities.of([parse_identity("email", email)]),
            ticket="T-1",
        )
        request = submit(
            db,
            settings,
            load_keyring(settings),
            submission,
            sources=answering(),
            operator="alice",
            now=NOW,
            dispatcher=RecordingDispatcher(),
        )
        emails[request.id] = email
    given: dict[Any, list[str]] = {}

    def runner(ctx: RunContext) -> dict[str, Any]:
        given[ctx.request_id] = list(ctx.identities.values("email"))
        return {}

    first = next(iter(emails))
    assert execute(make_worker(db, settings, runner), first) == Outcome.COMPLETED
    assert given == {request_id: [email] for request_id, email in emails.items()}
