from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from compliance import requests
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.errors import SourceUnavailableError, ValidationError
from compliance.execution import RunContext
from compliance.keyring import load_keyring
from compliance.maintenance import redispatch_queued, release_stale_claims
from compliance.models import DsrIdentity, DsrRequest, RequestKind
from compliance.worker import Outcome, Runner, Worker, _claim, _Seen, execute, fail_unrunnable
from tests.compliance.helpers import NOW, answering, submit_request


def claimed(worker: Worker, request_id: Any) -> bool:
    """The worker claimed the request (not: claimed queued exports instead)."""
    seen, batch = _claim(worker, request_id)
    return seen is _Seen.CLAIMED and batch[0][1].request_id == request_id


def make_worker(db: Database, settings: Settings, runner: Runner) -> Worker:
    return Worker(
        settings=settings,
        db=db,
        keyring=load_keyring(settings),
        sources=answering(),
        runners={RequestKind.EXPORT: runner, RequestKind.ERASURE: runner},
        clock=lambda: NOW,
    )


def status_of(db: Database, request: DsrRequest) -> DsrRequest:
    with db.session() as session:
        return session.get_one(DsrRequest, request.id)


def test_completed_request_keeps_receipt_and_loses_raw_identities(
    db: Database, settings: Settings
) -> None:
    seen: list[RunContext] = []

    def runner(ctx: RunContext) -> dict[str, Any]:
        seen.append(ctx)
        return {"sources": 0}

    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(make_worker(db, settings, runner), created.id) == Outcome.COMPLETED
    assert seen[0].identities.values("email") == ["ada@example.com"]
    done = status_of(db, created)
    assert (done.status, done.receipt, done.attempts) == ("completed", {"sources": 0}, 1)
    with db.session() as session:
        sealed = session.scalars(
            select(DsrIdentity.value_sealed).where(DsrIdentity.request_id == created.id)
        ).all()
    assert sealed == [None, None]


def test_a_second_delivery_of_the_same_message_does_nothing(
    db: Database, settings: Settings
) -> None:
    calls: list[int] = []
    created = submit_request(db, settings, RequestKind.EXPORT)
    worker = make_worker(db, settings, lambda ctx: calls.append(1) or {})
    assert execute(worker, created.id) == Outcome.COMPLETED
    assert execute(worker, created.id) == Outcome.SKIPPED
    assert calls == [1]


def test_terminal_error_fails_the_request_with_its_message(
    db: Database, settings: Settings
) -> None:
    def runner(ctx: RunContext) -> dict[str, Any]:
        raise ValidationError("manifest names table 'userz'; fix sources.toml")

    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(make_worker(db, settings, runner), created.id) == Outcome.FAILED
    failed = status_of(db, created)
    assert failed.status == "failed"
    assert failed.last_error is not None and "userz" in failed.last_error
    retried = requests.retry(
        db, created.id, operator="bob", now=NOW, dispatcher=RecordingDispatcher()
    )
    assert retried.status == "queued"


def test_unexpected_crash_fails_without_leaking_the_exception_text(
    db: Database, settings: Settings
) -> None:
    def runner(ctx: RunContext) -> dict[str, Any]:
        raise KeyError("ada@example.com")

    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(make_worker(db, settings, runner), created.id) == Outcome.FAILED
    assert status_of(db, created).last_error == "internal error (KeyError)"


def test_transient_error_releases_the_request_back_to_the_queue(
    db: Database, settings: Settings
) -> None:
    def runner(ctx: RunContext) -> dict[str, Any]:
        raise SourceUnavailableError("app database unavailable: connection refused")

    created = submit_request(db, settings, RequestKind.EXPORT)
    with pytest.raises(SourceUnavailableError):
        execute(make_worker(db, settings, runner), created.id)
    assert status_of(db, created).status == "queued"


def test_stale_running_claim_is_released_and_then_redispatched(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:  # a worker claimed it and died
        row = session.get_one(DsrRequest, created.id)
        row.status, row.updated_at = "running", NOW
    later = NOW + timedelta(seconds=settings.lease_seconds + 1)
    assert release_stale_claims(db, settings, later) == [created.id]
    assert status_of(db, created).status == "queued"
    dispatcher = RecordingDispatcher()
    even_later = later + timedelta(seconds=settings.redispatch_after_seconds + 1)
    assert redispatch_queued(db, settings, dispatcher, even_later) == [created.id]
    assert dispatcher.dispatched == [created.id]
    # the sweep restarted the clock: the next sweep does not flood the broker
    assert redispatch_queued(db, settings, RecordingDispatcher(), even_later) == []


def test_fresh_claims_and_fresh_queue_entries_are_left_alone(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert release_stale_claims(db, settings, NOW) == []
    assert redispatch_queued(db, settings, RecordingDispatcher(), NOW) == []
    assert status_of(db, created).status == "queued"


def test_a_worker_whose_claim_went_stale_cannot_finish_the_new_claim(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    later = NOW + timedelta(seconds=settings.lease_seconds + 1)
    second = make_worker(db, settings, lambda ctx: {})

    def slow_runner(ctx: RunContext) -> dict[str, Any]:
        # While this run looks dead, the sweep releases it and a second worker claims it.
        assert release_stale_claims(db, settings, later) == [created.id]
        assert claimed(second, created.id)
        return {"stale": True}

    assert execute(make_worker(db, settings, slow_runner), created.id) == Outcome.SKIPPED
    row = status_of(db, created)
    assert (row.status, row.receipt, row.attempts) == ("running", None, 2)
    with db.session() as session:
        sealed = session.scalars(
            select(DsrIdentity.value_sealed).where(DsrIdentity.request_id == created.id)
        ).all()
    assert None not in sealed  # the second run still needs them


def test_a_stale_worker_failing_late_does_not_fail_the_new_claim(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    later = NOW + timedelta(seconds=settings.lease_seconds + 1)
    second = make_worker(db, settings, lambda ctx: {})

    def failing_runner(ctx: RunContext) -> dict[str, Any]:
        release_stale_claims(db, settings, later)
        assert claimed(second, created.id)
        raise SourceUnavailableError("shop database unavailable")

    assert execute(make_worker(db, settings, failing_runner), created.id) == Outcome.SKIPPED
    assert status_of(db, created).status == "running"


def test_a_crash_is_logged_with_its_place_but_without_the_exception_text(
    db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def runner(ctx: RunContext) -> dict[str, Any]:
        try:
            {}["customer-qzxv-secret"]
        except KeyError as exc:
            raise RuntimeError("while exporting user qzxv-secret") from exc
        return {}

    created = submit_request(db, settings, RequestKind.EXPORT)
    with caplog.at_level("INFO", logger="gdpr"):
        assert execute(make_worker(db, settings, runner), created.id) == Outcome.FAILED
    logged = caplog.text + " ".join(str(vars(record)) for record in caplog.records)
    assert "dsr.run.crashed" in logged
    assert "RuntimeError at test_worker.py" in logged and "from KeyError" in logged
    assert "qzxv-secret" not in logged  # not digits: ids in the log could match them


def test_a_claim_that_heartbeats_while_the_sweep_runs_is_not_released(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compliance import maintenance
    from compliance.lifecycle import transition

    created = submit_request(db, settings, RequestKind.EXPORT)
    assert claimed(make_worker(db, settings, lambda ctx: {}), created.id)
    later = NOW + timedelta(seconds=settings.lease_seconds + 1)

    def heartbeat_then_transition(session: Any, request_id: Any, *args: Any, **kw: Any) -> Any:
        with db.session() as other:  # the worker's heartbeat renews the lease after the select
            other.get_one(DsrRequest, request_id).lease_until = later + timedelta(seconds=30)
        return transition(session, request_id, *args, **kw)

    monkeypatch.setattr(maintenance, "transition", heartbeat_then_transition)
    assert release_stale_claims(db, settings, later) == []
    assert status_of(db, created).status == "running"


def test_a_run_that_lost_its_claim_stops_at_its_next_heartbeat(
    db: Database, settings: Settings
) -> None:
    from compliance.models import DsrStep

    progressed: list[str] = []

    def runner(ctx: RunContext) -> dict[str, Any]:
        step = ctx.steps.start("app", "erase")
        with db.session() as session:  # meanwhile: released as stale and claimed again
            row = session.get_one(DsrRequest, ctx.request_id)
            row.attempts += 1
        ctx.steps.update(step, checkpoint={"at": 1})
        ctx.steps.save()
        progressed.append("after the lost claim")
        return {}

    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(make_worker(db, settings, runner), created.id) == Outcome.SKIPPED
    assert progressed == []
    after = status_of(db, created)
    assert (after.status, after.attempts) == ("running", 2)  # left to the run that took over
    with db.session() as session:  # the stale run's step writes rolled back with its heartbeat
        assert session.scalars(select(DsrStep)).all() == []


def chunked_runner(chunks: int) -> tuple[Runner, list[int]]:
    """A runner that needs `chunks` calls; records each call's claim."""
    calls: list[int] = []

    def runner(ctx: RunContext) -> dict[str, Any] | None:
        calls.append(ctx.claim or 0)
        return {"chunks": len(calls)} if len(calls) == chunks else None

    return runner, calls


def test_chunks_run_in_one_call_when_the_worker_cannot_requeue(
    db: Database, settings: Settings
) -> None:
    runner, calls = chunked_runner(3)
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(make_worker(db, settings, runner), created.id) == Outcome.COMPLETED
    assert calls == [1, 1, 1]
    assert status_of(db, created).receipt == {"chunks": 3}


def test_each_chunk_is_requeued_under_the_same_claim_until_done(
    db: Database, settings: Settings
) -> None:
    import dataclasses

    runner, calls = chunked_runner(3)
    queued: list[tuple[object, int]] = []
    worker = dataclasses.replace(
        make_worker(db, settings, runner), continuation=lambda rid, c: queued.append((rid, c))
    )
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(worker, created.id) == Outcome.CONTINUED
    assert status_of(db, created).status == "running"
    assert execute(worker, created.id, claim=1) == Outcome.CONTINUED
    assert execute(worker, created.id, claim=1) == Outcome.COMPLETED
    assert queued == [(created.id, 1), (created.id, 1)]
    assert calls == [1, 1, 1]
    assert status_of(db, created).status == "completed"


def test_a_chunk_for_a_lost_or_finished_claim_does_nothing(
    db: Database, settings: Settings
) -> None:
    runner, calls = chunked_runner(1)
    created = submit_request(db, settings, RequestKind.EXPORT)
    worker = make_worker(db, settings, runner)
    assert execute(worker, created.id, claim=1) == Outcome.SKIPPED  # still queued
    assert execute(worker, created.id) == Outcome.COMPLETED
    assert execute(worker, created.id, claim=1) == Outcome.SKIPPED  # finished
    assert calls == [1]


def test_a_chunk_that_cannot_be_requeued_releases_the_request(
    db: Database, settings: Settings
) -> None:
    import dataclasses

    def broker_down(request_id: object, claim: int) -> None:
        raise ConnectionError("broker unreachable")

    runner, _ = chunked_runner(2)
    worker = dataclasses.replace(make_worker(db, settings, runner), continuation=broker_down)
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(worker, created.id) == Outcome.RELEASED
    released = status_of(db, created)
    assert released.status == "queued"
    assert released.last_error is not None and "could not be queued" in released.last_error


def test_a_request_no_registered_source_can_look_up_fails_without_running(
    db: Database, settings: Settings
) -> None:
    import dataclasses

    ran: list[RunContext] = []
    created = submit_request(db, settings, RequestKind.ERASURE)
    requests.approve(
        db, settings, created.id, operator="bob", now=NOW, dispatcher=RecordingDispatcher()
    )
    # the manifest changed after submission: its only source now answers customer_id
    worker = dataclasses.replace(
        make_worker(db, settings, lambda ctx: ran.append(ctx) or {}),
        sources=answering("customer_id"),
    )
    assert execute(worker, created.id) == Outcome.FAILED
    failed = status_of(db, created)
    assert (failed.status, failed.receipt, ran) == ("failed", None, [])
    assert failed.last_error is not None
    assert failed.last_error.startswith(
        "no registered source can look up a subject by email or user_id"
    )


def test_a_worker_with_no_source_at_all_fails_the_request_with_a_clear_error(
    db: Database, settings: Settings
) -> None:
    import dataclasses

    created = submit_request(db, settings, RequestKind.EXPORT)
    worker = dataclasses.replace(make_worker(db, settings, lambda ctx: {}), sources=())
    assert execute(worker, created.id) == Outcome.FAILED
    assert (status_of(db, created).last_error or "").startswith("no data source is registered")


def test_a_request_a_broken_manifest_cannot_run_is_failed_with_its_one_line(
    db: Database, settings: Settings
) -> None:
    from compliance.models import AuditEvent

    created = submit_request(db, settings, RequestKind.EXPORT)
    error = "sources.app.tables.userz: no table 'userz'"
    assert fail_unrunnable(db, created.id, error, now=NOW) == Outcome.FAILED
    failed = status_of(db, created)
    assert (failed.status, failed.last_error, failed.attempts) == ("failed", error, 1)
    with db.session() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    assert actions[-2:] == ["request.claim", "request.fail"]
    assert fail_unrunnable(db, created.id, error, now=NOW) == Outcome.SKIPPED  # a duplicate


def test_a_broken_manifest_fails_the_running_claim_of_a_continued_chunk(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert claimed(make_worker(db, settings, lambda ctx: {}), created.id)
    assert fail_unrunnable(db, created.id, "bad", claim=2, now=NOW) == Outcome.SKIPPED
    assert status_of(db, created).status == "running"  # not our claim: left alone
    assert fail_unrunnable(db, created.id, "bad", claim=1, now=NOW) == Outcome.FAILED
    assert status_of(db, created).status == "failed"


def test_a_broken_manifest_leaves_a_request_that_is_not_queued_alone(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.ERASURE)  # awaiting approval
    assert fail_unrunnable(db, created.id, "bad", now=NOW) == Outcome.SKIPPED
    assert status_of(db, created).status == "awaiting_approval"


# --- leases -------------------------------------------------------------------------


def _at(db: Database, settings: Settings, runner: Runner, when: Any) -> Worker:
    worker = make_worker(db, settings, runner)
    return Worker(
        worker.settings,
        worker.db,
        worker.keyring,
        worker.sources,
        worker.runners,
        clock=lambda: when,
        name=f"worker@{when:%H%M%S}",
    )


def test_a_message_for_a_request_whose_lease_expired_takes_it_over(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert claimed(make_worker(db, settings, lambda ctx: {}), created.id)  # then dies
    later = NOW + timedelta(seconds=settings.lease_seconds + 1)
    seen: list[int | None] = []

    def runner(ctx: RunContext) -> dict[str, Any]:
        seen.append(ctx.claim)
        return {"done": True}

    assert execute(_at(db, settings, runner, later), created.id) == Outcome.COMPLETED
    done = status_of(db, created)
    assert (done.status, done.attempts, seen) == ("completed", 2, [2])
    assert done.lease_until is None


def test_a_message_for_a_request_whose_lease_is_alive_is_busy(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    assert claimed(make_worker(db, settings, lambda ctx: {}), created.id)
    soon = NOW + timedelta(seconds=settings.lease_seconds - 1)
    assert execute(_at(db, settings, lambda ctx: {}, soon), created.id) == Outcome.BUSY
    assert status_of(db, created).attempts == 1


def test_the_old_run_stops_at_its_next_heartbeat_after_a_takeover(
    db: Database, settings: Settings
) -> None:
    from compliance.errors import LeaseHeldError

    created = submit_request(db, settings, RequestKind.EXPORT)
    _, old = _claim(make_worker(db, settings, lambda ctx: {}), created.id)
    assert old
    later = NOW + timedelta(seconds=settings.lease_seconds + 1)
    from compliance.worker import _take_over

    with db.session() as session:
        assert _take_over(session, created.id, "b", later, settings.lease_seconds) is not None
    stale = RunContext(
        settings,
        db,
        load_keyring(settings),
        answering(),
        created.id,
        created.subject,
        requests_identities(),
        clock=lambda: later,
        claim=old[0][1].claim,
    )
    with pytest.raises(LeaseHeldError):
        stale.steps.save()


def requests_identities() -> Any:
    from tests.compliance.helpers import ada

    return ada()


def test_the_sweep_leaves_a_request_in_retry_backoff_alone(
    db: Database, settings: Settings
) -> None:
    def runner(ctx: RunContext) -> dict[str, Any]:
        raise SourceUnavailableError("app database unavailable: connection refused")

    created = submit_request(db, settings, RequestKind.EXPORT)
    with pytest.raises(SourceUnavailableError):
        execute(make_worker(db, settings, runner), created.id, retry_in=300)
    assert status_of(db, created).status == "queued"
    during = NOW + timedelta(seconds=200)
    assert redispatch_queued(db, settings, RecordingDispatcher(), during) == []
    after = NOW + timedelta(seconds=301)
    assert redispatch_queued(db, settings, RecordingDispatcher(), after) == [created.id]


def test_a_run_is_two_commits_its_claim_with_its_context_and_its_end_with_its_notes(
    db: Database, settings: Settings
) -> None:
    from sqlalchemy import event

    from compliance.models import AuditEvent

    def runner(ctx: RunContext) -> dict[str, Any]:
        assert ctx.identities.values("email") == ["ada@example.com"]
        step = ctx.steps.start("app", "notify")  # read with the claim: no query here
        ctx.steps.update(step, counts={"mailed": 1}, done=True)
        ctx.steps.note("export.link_mailed", {"recipients": 1})
        return {}

    created = submit_request(db, settings, RequestKind.EXPORT)
    seen: list[str] = []

    def statement(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        seen.append(sql)

    def commit(_c: Any) -> None:
        seen.append("COMMIT")

    event.listen(db.engine, "before_cursor_execute", statement)
    event.listen(db.engine, "commit", commit)
    try:
        assert execute(make_worker(db, settings, runner), created.id) == Outcome.COMPLETED
    finally:
        event.remove(db.engine, "before_cursor_execute", statement)
        event.remove(db.engine, "commit", commit)
    assert seen.count("COMMIT") == 2
    with db.session() as session:
        actions = list(
            session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.request_id == created.id)
                .order_by(AuditEvent.seq)
            )
        )
    assert actions[-3:] == ["request.claim", "export.link_mailed", "request.complete"]
    from compliance.models import DsrStep

    with db.session() as session:
        step = session.scalars(select(DsrStep).where(DsrStep.request_id == created.id)).one()
    assert (step.status, step.counts) == ("done", {"mailed": 1})


def test_a_completion_that_lost_its_claim_writes_neither_the_steps_nor_their_events(
    db: Database, settings: Settings
) -> None:
    from compliance.models import AuditEvent, DsrStep

    def runner(ctx: RunContext) -> dict[str, Any]:
        step = ctx.steps.start("app", "notify")
        ctx.steps.update(step, done=True)
        ctx.steps.note("export.link_mailed", {"recipients": 1})
        with db.session() as session:  # meanwhile the sweep releases the claim
            session.execute(
                DsrRequest.__table__.update()
                .where(DsrRequest.id == ctx.request_id)
                .values(status="queued")
            )
        return {}

    created = submit_request(db, settings, RequestKind.EXPORT)
    assert execute(make_worker(db, settings, runner), created.id) == Outcome.SKIPPED
    with db.session() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.request_id == created.id)
        ).all()
        steps = session.scalars(select(DsrStep).where(DsrStep.request_id == created.id)).all()
    assert "export.link_mailed" not in actions and "request.complete" not in actions
    assert steps == []
