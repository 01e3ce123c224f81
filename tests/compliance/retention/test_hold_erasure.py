"""An erasure that meets a legal hold: the rest is erased, the held part waits, and the
hold's end completes it. Real SQL sources (shop and CRM), the real worker and runners."""

from __future__ import annotations

import email
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from compliance import holds, maintenance
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.holds import HoldScope
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.models import DsrIdentity, DsrRequest, RequestKind
from compliance.requests import Submission, approve, submit
from compliance.sources.registry import Registry
from compliance.worker import Outcome, Worker, execute
from tasks.runtime import run_erasure
from tests.compliance.helpers import NOW
from tests.compliance.sources.sqlsample import load, snapshot
from tests.sample_app.fixtures import SampleDatabases

ADA = Identities.of([parse_identity("email", "ada@example.com")])


@pytest.fixture
def registry(sample_dbs: SampleDatabases, tmp_path: Path) -> Iterator[Registry]:
    loaded = load(sample_dbs, tmp_path)
    yield loaded
    loaded.close()


def _worker(db: Database, settings: Settings, registry: Registry, when: list) -> Worker:  # type: ignore[type-arg]
    return Worker(
        settings=settings,
        db=db,
        keyring=load_keyring(settings),
        sources=registry.sources,
        runners={RequestKind.ERASURE: run_erasure},
        clock=lambda: when[0],
    )


def _erasure(
    db: Database, settings: Settings, registry: Registry, *, dry_run: bool = False
) -> DsrRequest:
    keyring = load_keyring(settings)
    request = submit(
        db,
        settings,
        keyring,
        Submission(RequestKind.ERASURE, ADA, dry_run=dry_run),
        sources=registry.sources,
        operator="alice",
        now=NOW,
        dispatcher=RecordingDispatcher(),
    )
    if dry_run:  # a dry run changes nothing: it needs no approval
        return request
    return approve(
        db, settings, request.id, operator="bob", now=NOW, dispatcher=RecordingDispatcher()
    )


def _hold(db: Database, settings: Settings, **kw: object) -> int:
    hold = holds.add(
        db,
        HoldScope(**kw),  # type: ignore[arg-type]
        pseudonym_key=load_keyring(settings).pseudonym_key,
        known_sources=["shop", "crm"],
        reason="claim 2026-114 against the company",
        basis="Art. 17(3)(e) GDPR: defence of legal claims",
        until=None,
        operator="dora",
        now=NOW,
    )
    return hold.id


def _sealed(session: Session, request_id: uuid.UUID) -> int:
    """How many of the request's identities still hold their sealed value."""
    return (
        session.query(DsrIdentity)
        .filter(DsrIdentity.request_id == request_id, DsrIdentity.value_sealed.is_not(None))
        .count()
    )


def _mails(settings: Settings) -> list[email.message.Message]:
    outbox = settings.home / "outbox"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(outbox.glob("*.eml"))]


def test_a_held_source_stays_the_rest_is_erased_and_the_release_completes_it(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    crm_before = snapshot(sample_dbs.crm_url)
    hold_id = _hold(db, settings, identities=ADA, source="crm")
    request = _erasure(db, settings, registry)
    when = [NOW]
    worker = _worker(db, settings, registry, when)

    assert execute(worker, request.id) == Outcome.HELD
    with db.session() as session:
        held = session.get_one(DsrRequest, request.id)
        sealed = _sealed(session, request.id)
    assert held.status == "on_hold"
    assert held.receipt is not None
    assert held.receipt["held"] == [
        {
            "source": "crm",
            "holds": [
                {
                    "hold": hold_id,
                    "location": "*",
                    "legal_basis": "Art. 17(3)(e) GDPR: defence of legal claims",
                    "until": None,
                }
            ],
        }
    ]
    assert sealed > 0  # kept, to erase the held part later
    assert snapshot(sample_dbs.crm_url) == crm_before
    shop_users = snapshot(sample_dbs.shop_url)["users"]
    assert all(row["email"] != "ada@example.com" for row in shop_users.values())
    [first] = _mails(settings)
    assert "legal hold" in first["Subject"]
    assert "defence of legal claims" in first.get_payload()[0].get_payload(decode=True).decode()

    # still held: the sweep leaves it waiting
    assert maintenance.resume_released(db, RecordingDispatcher(), NOW) == []
    holds.release(db, hold_id, operator="dora", reason="claim settled", now=NOW)
    dispatcher = RecordingDispatcher()
    assert maintenance.resume_released(db, dispatcher, NOW) == [request.id]
    assert dispatcher.dispatched == [request.id]

    when[0] = NOW + timedelta(minutes=5)
    assert execute(worker, request.id) == Outcome.COMPLETED
    with db.session() as session:
        done = session.get_one(DsrRequest, request.id)
        left = _sealed(session, request.id)
    assert done.status == "completed"
    assert done.receipt is not None and "held" not in done.receipt
    assert left == 0
    crm_customers = snapshot(sample_dbs.crm_url)["customers"]
    assert len(crm_customers) == len(crm_before["customers"]) - 1
    assert len(_mails(settings)) == 2


def test_a_hold_that_reaches_its_end_date_releases_itself(
    db: Database, settings: Settings, registry: Registry
) -> None:
    hold = holds.add(
        db,
        HoldScope(identities=ADA),
        pseudonym_key=load_keyring(settings).pseudonym_key,
        known_sources=["shop", "crm"],
        reason="audit",
        basis="Art. 17(3)(b)",
        until=NOW + timedelta(days=10),
        operator="dora",
        now=NOW,
    )
    request = _erasure(db, settings, registry)
    when = [NOW]
    assert execute(_worker(db, settings, registry, when), request.id) == Outcome.HELD
    early = maintenance.sweep(db, settings, RecordingDispatcher(), NOW + timedelta(days=9))
    assert early.expired_holds == [] and early.resumed == []
    late = maintenance.sweep(db, settings, RecordingDispatcher(), NOW + timedelta(days=10))
    assert late.expired_holds == [hold.id]
    assert late.resumed == [request.id]


def test_a_dry_run_reports_what_a_hold_would_keep_and_completes(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    before = snapshot(sample_dbs.shop_url), snapshot(sample_dbs.crm_url)
    hold_id = _hold(db, settings, identities=ADA, source="crm")
    request = _erasure(db, settings, registry, dry_run=True)

    assert execute(_worker(db, settings, registry, [NOW]), request.id) == Outcome.COMPLETED
    with db.session() as session:
        done = session.get_one(DsrRequest, request.id)
        sealed = _sealed(session, request.id)
    assert done.status == "completed"  # not on_hold: nothing waits for the hold's end
    assert done.receipt is not None
    assert [entry["source"] for entry in done.receipt["held"]] == ["crm"]
    assert done.receipt["held"][0]["holds"][0]["hold"] == hold_id
    assert sealed == 0
    assert (snapshot(sample_dbs.shop_url), snapshot(sample_dbs.crm_url)) == before
    assert _mails(settings) == []
