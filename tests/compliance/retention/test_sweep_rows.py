"""Row-level retention on SQLite and PostgreSQL: what goes, what stays, what is held."""

from __future__ import annotations

from compliance import holds
from compliance.holds import HoldScope
from compliance.identities import Identities, parse_identity
from compliance.retention import sweep
from tests.compliance.retention.conftest import Harness
from tests.sample_app import retention as app

ALL_SESSIONS = set(range(1, app.USERS * 5 + 1))


def _hold_user(h: Harness, user: int, **scope: str) -> int:
    identities = Identities.of([parse_identity("email", app.email(user))])
    hold = holds.add(
        h.db,
        HoldScope(identities=identities, **scope),
        pseudonym_key=h.keyring.pseudonym_key,
        known_sources=["app"],
        reason="litigation 2026-17",
        basis="Art. 17(3)(e) GDPR: legal claims",
        until=None,
        operator="dora",
        now=h.now,
    )
    return hold.id


def test_expired_rows_go_and_fresh_rows_stay(harness: Harness) -> None:
    run = sweep.run_inline(harness.ctx(), "app.sessions")
    assert run.status == "completed"
    assert harness.keys("sessions") == ALL_SESSIONS - app.expired_sessions()
    assert run.counts["deleted"] == len(app.expired_sessions())
    assert run.counts["batches"] > 1  # key-range batches, not one statement


def test_a_second_run_finds_nothing_to_do(harness: Harness) -> None:
    sweep.run_inline(harness.ctx(), "app.sessions")
    again = sweep.run_inline(harness.ctx(), "app.sessions")
    assert again.counts["deleted"] == 0
    assert harness.keys("sessions") == ALL_SESSIONS - app.expired_sessions()


def test_the_where_filter_keeps_rows_it_does_not_select(harness: Harness) -> None:
    sweep.run_inline(harness.ctx(), "app.activity")
    # per user: view@60d goes, order@60d and view@1d stay
    assert harness.keys("activity") == {k for k in range(1, app.USERS * 3 + 1) if k % 3 != 1}


def test_a_held_subjects_rows_stay_and_are_counted(harness: Harness) -> None:
    _hold_user(harness, 2)
    run = sweep.run_inline(harness.ctx(), "app.sessions")
    kept = app.expired_sessions(2)
    assert harness.keys("sessions") == ALL_SESSIONS - app.expired_sessions() | kept
    assert run.counts["held"] == len(kept)
    assert run.counts["deleted"] == len(app.expired_sessions()) - len(kept)


def test_a_hold_on_the_table_keeps_all_of_it(harness: Harness) -> None:
    holds.add(
        harness.db,
        HoldScope(source="app", location="sessions"),
        pseudonym_key=harness.keyring.pseudonym_key,
        known_sources=["app"],
        reason="regulator inquiry",
        basis="Art. 17(3)(e)",
        until=None,
        operator="dora",
        now=harness.now,
    )
    run = sweep.run_inline(harness.ctx(), "app.sessions")
    assert harness.keys("sessions") == ALL_SESSIONS
    assert run.counts["held"] == len(app.expired_sessions())


def test_the_plan_counts_what_the_run_then_does(harness: Harness) -> None:
    _hold_user(harness, 3)
    [found] = sweep.plan(harness.ctx(), "app.sessions")
    assert (found.due, found.held) == (15, 3)
    run = sweep.run_inline(harness.ctx(), "app.sessions")
    assert (run.counts["deleted"], run.counts["held"]) == (15, 3)
