"""Discovery keeps what it found sealed, and never after the request was closed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sqlalchemy import select

from compliance.cascade import discover, store_discovered
from compliance.config import Settings
from compliance.db import Database
from compliance.errors import IllegalTransitionError
from compliance.execution import RunContext
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.lifecycle import Event, transition
from compliance.models import DsrIdentity, DsrStep, RequestKind
from compliance.sealed import load_identities, wipe_identities
from tests.compliance.helpers import NOW, FakeSource, submit_request


def context(db: Database, settings: Settings, request_id: Any, subject: str) -> RunContext:
    keyring = load_keyring(settings)
    return RunContext(
        settings=settings,
        db=db,
        keyring=keyring,
        sources=(),
        request_id=request_id,
        subject=subject,
        identities=load_identities(db, keyring, request_id),
        clock=lambda: NOW,
    )


def sealed(db: Database, request_id: Any) -> list[bytes | None]:
    with db.session() as session:
        return list(
            session.scalars(
                select(DsrIdentity.value_sealed).where(DsrIdentity.request_id == request_id)
            )
        )


def store(db: Database, ctx: RunContext, found: Identities) -> list[Any]:
    """`store_discovered` in a transaction of its own, its step saved with it."""
    with db.session() as session:
        added = store_discovered(ctx, found, session)
        ctx.steps.save(session, renew=False)
    return added


def test_discovered_identities_are_stored_sealed_while_the_request_runs(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    ctx = context(db, settings, created.id, created.subject)
    found = ctx.identities.union([parse_identity("customer_id", "C-77")])
    assert [i.type for i in store(db, ctx, found)] == ["customer_id"]
    assert len(sealed(db, created.id)) == 3 and None not in sealed(db, created.id)


def test_a_stale_run_cannot_store_identities_after_the_request_was_closed(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    ctx = context(db, settings, created.id, created.subject)  # a run that went stale
    with db.session() as session:  # the run that took over finished and wiped
        transition(session, created.id, Event.CLAIM, actor="worker-2", now=NOW)
        transition(session, created.id, Event.COMPLETE, actor="worker-2", now=NOW)
        wipe_identities(session, created.id)
    late = Identities.of([parse_identity("customer_id", "C-77")])
    with pytest.raises(IllegalTransitionError, match="completed"):
        store(db, ctx, late)
    assert sealed(db, created.id) == [None, None]


class LinkingSource(FakeSource):
    """Answers the subject's email with a customer id it links to it."""

    def resolve(self, identities: Any) -> Any:
        return identities.union([parse_identity("customer_id", "C-77")])


def test_a_dry_runs_discover_step_is_done_and_each_attempt_resolves_again(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    ctx = dataclasses.replace(
        context(db, settings, created.id, created.subject),
        sources=(LinkingSource("crm"),),
        dry_run=True,
    )
    assert "customer_id" in discover(ctx).types()
    assert "customer_id" in discover(ctx).types()  # nothing stored to read back: resolved
    with db.session() as session:
        step = session.scalars(select(DsrStep).where(DsrStep.request_id == created.id)).one()
    assert (step.action, step.status, step.attempts) == ("discover", "done", 1)
    assert len(sealed(db, created.id)) == 2  # the given identities only


class Linker:
    """A source that links `links` (identity -> identity it leads to), counting asks."""

    def __init__(self, links: dict[tuple[str, str], tuple[str, str]]) -> None:
        self.links = links
        self.asked: list[Identities] = []

    def resolve(self, identities: Identities) -> Identities:
        self.asked.append(identities)
        found = identities
        while True:  # its own fixpoint, as every source's answer is
            more = [self.links[(i.type, i.value)] for i in found if (i.type, i.value) in self.links]
            grown = found.union(parse_identity(t, v) for t, v in more)
            if grown == found:
                return found
            found = grown


def test_one_source_is_asked_once_and_asked_again_only_when_another_adds_to_its_answer() -> None:
    from compliance.cascade import resolve

    email = Identities.of([parse_identity("email", "ada@example.com")])
    alone = Linker({("email", "ada@example.com"): ("customer_id", "C-1")})
    assert resolve([alone], email).types() == {"email", "customer_id"}
    assert len(alone.asked) == 1

    crm = Linker({("email", "ada@example.com"): ("customer_id", "C-1")})
    shop = Linker({("customer_id", "C-1"): ("user_id", "U-9")})
    found = resolve([crm, shop], email)
    assert found.types() == {"email", "customer_id", "user_id"}
    assert len(crm.asked) == 2  # the shop added a user id to what it had answered
    assert len(shop.asked) == 1  # nothing new to it after its answer
    assert "user_id" in crm.asked[1].types()
