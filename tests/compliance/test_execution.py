"""The step log of a run: steps read once, written in few transactions, never ahead of
the database after a rollback; and the bookkeeping of small requests, bounded."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from compliance.config import Settings
from compliance.db import Database
from compliance.errors import IntegrityError, LeaseHeldError
from compliance.execution import RunContext, StepLog
from compliance.keyring import load_keyring
from compliance.lifecycle import Event, transition
from compliance.models import AuditEvent, DsrStep, RequestKind
from compliance.worker import Outcome, execute
from tests.compliance.helpers import (
    NOW,
    ada,
    answering,
    statements,
    submit_request,
    write_small_manifest,
)


def run_context(db: Database, settings: Settings, clock: Any = lambda: NOW) -> RunContext:
    request = submit_request(db, settings, RequestKind.ERASURE)
    return RunContext(
        settings=settings,
        db=db,
        keyring=load_keyring(settings),
        sources=answering(),
        request_id=request.id,
        subject=request.subject,
        identities=ada(),
        clock=clock,
    )


def stored(db: Database, ctx: RunContext) -> dict[tuple[str, str], DsrStep]:
    with db.session() as session:
        rows = session.scalars(select(DsrStep).where(DsrStep.request_id == ctx.request_id))
        return {(row.source, row.action): row for row in rows}


def reread(db: Database, ctx: RunContext) -> StepLog:
    """The steps as a later run of the request reads them."""
    return StepLog(
        db, ctx.request_id, claim=None, clock=lambda: NOW, lease_seconds=60, keyring=ctx.keyring
    )


def test_a_run_reads_its_steps_once_and_writes_them_only_when_saved(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    with statements(db) as before_save:
        first = ctx.steps.start("app", "erase")
        second = ctx.steps.start("crm", "erase")
        ctx.steps.update(first, add_counts={"deleted": 2}, checkpoint={"after": 7})
    assert stored(db, ctx) == {}  # nothing written yet
    with statements(db) as saving:
        ctx.steps.save()
        ctx.steps.update(second, add_counts={"deleted": 1}, done=True)
        ctx.steps.update(first, add_counts={"deleted": 3}, done=True)
        ctx.steps.save()
    seen = before_save + saving
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "dsr_step" in s]
    assert len(reads) == 1
    assert saving.count("COMMIT") == 2
    rows = stored(db, ctx)
    assert rows[("app", "erase")].counts == {"deleted": 5}
    assert set(rows[("app", "erase")].checkpoint) == {"sealed"}
    assert reread(db, ctx).get("app", "erase").checkpoint == {"after": 7}
    assert (rows[("app", "erase")].status, rows[("app", "erase")].attempts) == ("done", 1)
    assert rows[("crm", "erase")].status == "done"


def test_a_rolled_back_save_is_forgotten_and_the_steps_are_read_again(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    step = ctx.steps.start("app", "revoke")
    ctx.steps.update(step, add_counts={"links_revoked": 1})
    ctx.steps.save()
    with pytest.raises(RuntimeError), db.session() as session:
        ctx.steps.update(step, add_counts={"links_revoked": 4})
        ctx.steps.save(session)
        raise RuntimeError("the change these counts describe failed")
    assert step.counts == {}  # forgotten ...
    again = ctx.steps.get("app", "revoke")
    assert again is step and step.counts == {"links_revoked": 1}  # ... and read again
    ctx.steps.update(step, add_counts={"links_revoked": 2})
    ctx.steps.save()
    assert stored(db, ctx)[("app", "revoke")].counts == {"links_revoked": 3}


def _actions(db: Database, ctx: RunContext) -> list[str]:
    with db.session() as session:
        query = select(AuditEvent.action).where(AuditEvent.request_id == ctx.request_id)
        return list(session.scalars(query.order_by(AuditEvent.seq)))


def test_a_noted_event_is_written_with_the_next_save_and_forgotten_with_a_rollback(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    step = ctx.steps.start("email", "notify")
    ctx.steps.update(step, counts={"mailed": 1}, done=True)
    ctx.steps.note("erasure.receipt_mailed", {"recipients": 1})
    assert ctx.steps.pending and "erasure.receipt_mailed" not in _actions(db, ctx)
    with pytest.raises(RuntimeError), db.session() as session:
        ctx.steps.save(session)
        raise RuntimeError("the transaction that would record the mail fails")
    assert not ctx.steps.pending and "erasure.receipt_mailed" not in _actions(db, ctx)
    assert not ctx.steps.get("email", "notify").done  # so the next run mails again
    step = ctx.steps.start("email", "notify")
    ctx.steps.update(step, counts={"mailed": 1}, done=True)
    ctx.steps.note("erasure.receipt_mailed", {"recipients": 1})
    ctx.steps.save()
    assert _actions(db, ctx)[-1] == "erasure.receipt_mailed"
    assert stored(db, ctx)[("email", "notify")].status == "done"


def test_a_committed_save_is_not_forgotten_when_its_session_closes(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    step = ctx.steps.start("app", "erase")
    with db.session() as session:
        ctx.steps.save(session)
    ctx.steps.update(step, done=True)
    ctx.steps.save()  # an UPDATE of the row written above, not a second INSERT
    assert stored(db, ctx)[("app", "erase")].status == "done"


def test_a_save_under_a_lost_claim_writes_nothing(db: Database, settings: Settings) -> None:
    ctx = run_context(db, settings)
    with db.session() as session:
        transition(session, ctx.request_id, Event.APPROVE, actor="bob", now=NOW)
        transition(session, ctx.request_id, Event.CLAIM, actor="worker", now=NOW)
    stale = dataclasses.replace(ctx, claim=7)  # another run's claim is current
    stale.steps.start("app", "erase")
    with pytest.raises(LeaseHeldError):
        stale.steps.save()
    assert stored(db, ctx) == {}


def test_beat_saves_and_renews_at_most_once_per_third_of_the_lease(
    db: Database, settings: Settings
) -> None:
    times = [NOW]
    ctx = run_context(db, settings, clock=lambda: times[-1])
    step = ctx.steps.start("app", "export")
    ctx.steps.beat()
    assert stored(db, ctx) == {}  # the claim has just set the lease
    times.append(NOW + timedelta(seconds=settings.lease_seconds / 3))
    ctx.steps.beat()
    assert stored(db, ctx)[("app", "export")].status == "running"
    ctx.steps.update(step, counts={"rows": 3}, done=True)
    ctx.steps.beat()
    assert stored(db, ctx)[("app", "export")].status == "running"  # not due again yet


def test_a_reopened_step_runs_again_from_the_start(db: Database, settings: Settings) -> None:
    ctx = run_context(db, settings)
    step = ctx.steps.start("app", "erase")
    ctx.steps.update(step, checkpoint={"after": 3}, done=True)
    ctx.steps.save()
    later = dataclasses.replace(ctx)  # the next run reads the steps afresh
    later.steps.reopen("app", "erase")
    later.steps.save()
    row = stored(db, ctx)[("app", "erase")]
    assert (row.status, row.checkpoint, row.finished_at) == ("pending", {}, None)


# --- the bookkeeping of one small request, bounded ------------------------------------------

# Control-database work of one request on one small SQLite source, run by the worker with
# the production runners, submission excluded (before the step log: export 53 statements in
# 18 transactions, erasure 68 in 28; before the claim read its context and the package its
# link: export 39 in 8, erasure 41 in 13; before a chunk that changes nothing was saved
# with the next: erasure 37 in 11; before the package stored what discovery found, the
# claim looked before it claimed and the chain's lock and head were one call: export 23 in
# 4, erasure 34 in 10; before the exports an erasure revokes were found in one statement:
# erasure 30 in 10). The claim looks at the request first, unlocked (one statement; a
# message whose request another run's batch claimed stops there), and an export's claim
# also takes queued exports with it (`EXPORT_BATCH`). An export is 3 transactions: claim
# (with its steps and identities), package (with the identities discovery found, the link,
# the steps), completion (with the mail's step and event). Raising a bound needs a reason:
# every request pays it. Audit events are not bounded down: every state change keeps its
# event.
BOUNDS = {
    RequestKind.EXPORT: {"statements": 18, "transactions": 3, "audit_events": 5},
    RequestKind.ERASURE: {"statements": 29, "transactions": 9, "audit_events": 5},
}


@pytest.fixture
def small_worker(pg_settings: Settings, tmp_path: Path) -> Iterator[tuple[Any, Database]]:
    from tasks import runtime

    manifest = write_small_manifest(tmp_path / "source")
    with sqlite3.connect(manifest.parent / "app.db") as conn:
        conn.execute("INSERT INTO users VALUES (1, 'ada@example.com')")
    conn.close()
    settings = pg_settings.with_overrides(sources=str(manifest), four_eyes=False)
    db = Database.connect(settings)
    db.upgrade()
    built = runtime.build_worker(runtime.Control(settings, db, load_keyring(settings)))
    worker = dataclasses.replace(built, continuation=None, clock=lambda: NOW)
    yield worker, db
    for source in worker.sources:
        source.close()
    db.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("kind", [RequestKind.EXPORT, RequestKind.ERASURE])
def test_a_small_request_stays_within_its_bookkeeping_bounds(
    small_worker: tuple[Any, Database], kind: RequestKind
) -> None:
    worker, db = small_worker
    request = submit_request(db, worker.settings, kind, sources=worker.sources)
    if kind == RequestKind.ERASURE:
        with db.session() as session:
            transition(session, request.id, Event.APPROVE, actor="bob", now=NOW)
    before = _audits(db, request.id)
    with statements(db) as seen:
        assert execute(worker, request.id) == Outcome.COMPLETED
    found = {
        "statements": sum(s != "COMMIT" for s in seen),
        "transactions": seen.count("COMMIT"),
        "audit_events": len(_audits(db, request.id)) - len(before),
    }
    assert all(found[k] <= v for k, v in BOUNDS[kind].items()), found
    assert found["audit_events"] == BOUNDS[kind]["audit_events"], found  # none dropped


def _audits(db: Database, request_id: Any) -> list[str]:
    with db.session() as session:
        return list(
            session.scalars(select(AuditEvent.action).where(AuditEvent.request_id == request_id))
        )


def test_a_checkpoint_holding_row_keys_is_stored_sealed_and_read_back(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    step = ctx.steps.start("app", "erase")
    keys = {"orphans": {"users": [["ada@example.com"]]}, "table": 2}
    ctx.steps.update(step, checkpoint=keys)
    ctx.steps.save()
    row = stored(db, ctx)[("app", "erase")]
    assert "ada@example.com" not in json.dumps(row.checkpoint)
    assert reread(db, ctx).get("app", "erase").checkpoint == keys
    # bound to its step: the same sealed value under another step does not open
    other = reread(db, dataclasses.replace(ctx, request_id=uuid.uuid4()))
    moved = DsrStep(source="app", action="erase", checkpoint=row.checkpoint)
    with pytest.raises(IntegrityError, match="tampered"):
        other._apply([moved])  # type: ignore[list-item]


def test_a_plain_checkpoint_written_before_sealing_is_read_as_it_is(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    plain = StepLog(db, ctx.request_id, claim=None, clock=lambda: NOW, lease_seconds=60)
    plain.update(plain.start("crm", "erase"), checkpoint={"after": 3})
    plain.save()
    assert stored(db, ctx)[("crm", "erase")].checkpoint == {"after": 3}
    assert reread(db, ctx).get("crm", "erase").checkpoint == {"after": 3}


def _sample(name: str, **labels: str) -> float:
    from compliance import metrics

    for family in metrics.Exposed().collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_a_step_that_ends_is_timed_once_and_one_that_fails_is_counted(
    db: Database, settings: Settings
) -> None:
    now = [NOW]
    ctx = dataclasses.replace(run_context(db, settings, clock=lambda: now[0]), kind="erasure")
    labels = {"kind": "erasure", "source": "crm", "action": "erase"}
    timed = _sample("gdpr_step_duration_seconds_count", **labels)
    seconds = _sample("gdpr_step_duration_seconds_sum", **labels)
    failed = _sample("gdpr_step_failures_total", **labels)
    step = ctx.steps.start("crm", "erase")
    now[0] = NOW + timedelta(seconds=90)
    ctx.steps.update(step, done=True)
    ctx.steps.update(step, done=True)  # already done: not timed again
    verify = ctx.steps.start("crm", "verify")
    ctx.steps.fail(verify, "2 item(s) left")
    assert _sample("gdpr_step_duration_seconds_count", **labels) - timed == 1
    assert _sample("gdpr_step_duration_seconds_sum", **labels) - seconds == pytest.approx(90)
    assert _sample("gdpr_step_failures_total", **labels) == failed  # the erase step did not fail
    assert _sample("gdpr_step_failures_total", **{**labels, "action": "verify"}) >= 1


def test_a_failed_step_records_when_it_failed_and_a_new_attempt_forgets_it(
    db: Database, settings: Settings
) -> None:
    ctx = run_context(db, settings)
    step = ctx.steps.start("app", "erase")
    ctx.steps.fail(step, "boom")
    row = stored(db, ctx)[("app", "erase")]
    assert row.status == "failed" and row.finished_at is not None  # the alerts count these
    later = dataclasses.replace(ctx)
    later.steps.start("app", "erase")
    later.steps.save()
    assert stored(db, ctx)[("app", "erase")].finished_at is None
