"""Subject-level retention: accounts closed longer ago than the limit go through the full
erasure cascade (same engine, ownership rules, verification, receipt, suppression), never
a bare DELETE; other people's rows are never touched; holds keep their subject."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from compliance import holds
from compliance.holds import HoldScope
from compliance.identities import Identities, parse_identity
from compliance.models import DsrRequest, RequestKind, Suppression
from compliance.retention import sweep
from compliance.worker import Outcome, Worker, execute
from tasks.runtime import run_erasure
from tests.compliance.retention.conftest import Harness
from tests.compliance.sources.sqlsample import snapshot
from tests.sample_app import retention as app

GONE = set(app.CLOSED_LONG_AGO)


def _erase_all(h: Harness) -> list[Outcome]:
    worker = Worker(
        settings=h.settings,
        db=h.db,
        keyring=h.keyring,
        sources=h.registry.sources,
        runners={RequestKind.ERASURE: run_erasure},
        clock=lambda: h.now,
    )
    return [execute(worker, request_id) for request_id in h.dispatcher.dispatched]


def _without(rows: dict[Any, dict[str, Any]], users: set[int], column: str) -> dict[Any, Any]:
    return {k: r for k, r in rows.items() if r[column] not in users}


def test_accounts_closed_a_year_ago_are_erased_through_the_cascade(harness: Harness) -> None:
    before = snapshot(harness.url)
    run = sweep.run_inline(harness.ctx(), "app.users")
    assert run.counts["dispatched"] == 2
    assert _erase_all(harness) == [Outcome.COMPLETED, Outcome.COMPLETED]

    after = snapshot(harness.url)
    assert {k[0] for k in after["users"]} == set(range(1, app.USERS + 1)) - GONE
    assert _without(before["sessions"], GONE, "user_id") == after["sessions"]
    assert _without(before["activity"], GONE, "user_id") == after["activity"]
    # the ledger is kept by law: anonymised for the erased, untouched for everyone else
    for key, row in after["ledger"].items():
        expected = None if key[0] in GONE else before["ledger"][key]["user_id"]
        assert row["user_id"] == expected
    with harness.db.session() as session:
        requests = session.scalars(select(DsrRequest)).all()
        suppressed = session.scalars(select(Suppression)).all()
    assert {r.origin for r in requests} == {"retention:app.users"}
    assert all(r.status == "completed" and r.receipt["verified"] for r in requests)
    assert len(suppressed) == 2
    assert not (harness.settings.home / "outbox").exists()  # nobody asked to be told


def test_a_second_sweep_finds_no_one_and_an_open_erasure_is_not_doubled(
    harness: Harness,
) -> None:
    sweep.run_inline(harness.ctx(), "app.users")
    again = sweep.run_inline(harness.ctx(), "app.users")
    assert (again.counts["dispatched"], again.counts["in_progress"]) == (0, 2)
    _erase_all(harness)
    harness.dispatcher.dispatched.clear()
    last = sweep.run_inline(harness.ctx(), "app.users")
    assert (last.counts["dispatched"], last.counts["in_progress"]) == (0, 0)


def test_a_held_account_is_kept_and_counted(harness: Harness) -> None:
    holds.add(
        harness.db,
        HoldScope(identities=Identities.of([parse_identity("email", app.email(5))])),
        pseudonym_key=harness.keyring.pseudonym_key,
        known_sources=["app"],
        reason="claim 88",
        basis="Art. 17(3)(e)",
        until=None,
        operator="dora",
        now=harness.now,
    )
    run = sweep.run_inline(harness.ctx(), "app.users")
    assert (run.counts["dispatched"], run.counts["held"]) == (1, 1)
    _erase_all(harness)
    assert {k[0] for k in snapshot(harness.url)["users"]} == set(range(1, app.USERS + 1)) - {4}


def test_a_policy_can_ask_for_the_subject_to_be_told(harness: Harness) -> None:
    harness.reload("")
    manifest = harness.manifest.read_text().replace(
        'scope = "subject" }', 'scope = "subject", notify = true }'
    )
    harness.manifest.write_text(manifest)
    harness.reload_from_file()
    sweep.run_inline(harness.ctx(), "app.users")
    _erase_all(harness)
    assert len(list((harness.settings.home / "outbox").glob("*.eml"))) == 2
