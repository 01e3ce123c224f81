"""The audit chain: appends in one transaction share one lock and one read of the head,
yet the chain stays one unbroken line, across savepoints and concurrent writers."""

from __future__ import annotations

import threading
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import select, text

from compliance import audit
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.models import AuditEvent
from tests.compliance.helpers import statements


def _chain(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _verified(db: Database) -> int:
    with db.session() as session:
        report = audit.verify_chain(session)
    assert report.ok, report
    return report.checked


def test_events_recorded_and_appended_in_one_transaction_form_one_chain(db: Database) -> None:
    now = utcnow()
    with db.session() as session:
        audit.record(session, actor="a", action="first", now=now)
    with db.session() as session:
        audit.record(session, actor="a", action="second", now=now)
        audit.append(
            session,
            [
                audit.Pending("a", "third", now, details={"n": 3}),
                audit.Pending("a", "fourth", now + timedelta(seconds=1)),
            ],
        )
        audit.record(session, actor="a", action="fifth", now=now)
    events = _chain(db)
    assert [e.action for e in events] == ["first", "second", "third", "fourth", "fifth"]
    assert all(later.prev_hash == earlier.hash for earlier, later in pairwise(events))
    assert events[0].prev_hash == audit.GENESIS
    assert _verified(db) == 5


def test_a_rolled_back_savepoint_leaves_no_gap_in_the_chain(db: Database) -> None:
    now = utcnow()
    with db.session() as session:
        audit.record(session, actor="a", action="kept", now=now)
        with pytest.raises(RuntimeError), session.begin_nested():
            audit.record(session, actor="a", action="rolled back", now=now)
            raise RuntimeError("undo the savepoint")
        audit.record(session, actor="a", action="after", now=now)
        with session.begin_nested():
            audit.record(session, actor="a", action="released", now=now)
        audit.record(session, actor="a", action="last", now=now)
    assert [e.action for e in _chain(db)] == ["kept", "after", "released", "last"]
    assert _verified(db) == 4


@pytest.mark.postgres
def test_the_chain_is_locked_and_its_head_read_once_per_transaction(
    pg_settings: Settings,
) -> None:
    db = Database.connect(pg_settings)
    db.upgrade()
    try:
        with statements(db) as seen, db.session() as session:
            for number in range(3):
                audit.record(session, actor="a", action=f"e{number}", now=utcnow())
            audit.append(session, [audit.Pending("a", "e3", utcnow())])
        assert sum("gdpr_audit_head" in s for s in seen) == 1  # lock and head, one call
        assert not [s for s in seen if s.lstrip().startswith("SELECT audit_event.hash")]
        assert sum(s.lstrip().startswith("INSERT INTO audit_event") for s in seen) == 4
        assert _verified(db) == 4
    finally:
        db.dispose()


def _lock_and_read_head_in_two_statements(session: Any) -> None:
    """What a run of the version before `gdpr_audit_head` did to take the chain."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": audit._CHAIN_LOCK_KEY})
    head = session.execute(select(AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1))
    audit._moved(session, head.scalar_one_or_none() or audit.GENESIS)


@pytest.mark.postgres
def test_concurrent_writers_on_postgres_keep_one_unbroken_chain(pg_settings: Settings) -> None:
    db = Database.connect(pg_settings)
    db.upgrade()
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for number in range(15):
                with db.session() as session:
                    if name in {"w1", "w3"}:  # as before migration 0004: mixed versions
                        _lock_and_read_head_in_two_statements(session)
                    audit.record(session, actor=name, action="one", now=utcnow())
                    if number % 2:
                        more = [audit.Pending(name, "batch", utcnow()) for _ in range(2)]
                        audit.append(session, more)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert _verified(db) == 4 * (15 + 7 * 2)
    finally:
        db.dispose()
