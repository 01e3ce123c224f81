"""The erasure runner on the sample application: control database and sample databases
each on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from compliance.cascade import discover
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.erasure import erase_chunk, run_erasure
from compliance.errors import ResidualDataError, UnsupportedError
from compliance.execution import RunContext, StepLog
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.models import AuditEvent, DsrIdentity, DsrStep, RequestKind, Suppression
from compliance.requests import Submission, submit
from compliance.sealed import load_identities
from compliance.sources.base import DataSource, EraseResult, Residue
from compliance.sources.registry import Registry
from tests.compliance.helpers import NOW, FakeSource
from tests.compliance.sources.sqlsample import load, snapshot
from tests.compliance.sources.test_sql_statements import recorded
from tests.sample_app.fixtures import SampleDatabases


@pytest.fixture
def registry(sample_dbs: SampleDatabases, tmp_path: Path) -> Iterator[Registry]:
    loaded = load(sample_dbs, tmp_path)
    yield loaded
    loaded.close()


def request_ctx(
    db: Database,
    settings: Settings,
    sources: Sequence[DataSource],
    *,
    dry_run: bool = False,
    request_id: Any = None,
) -> RunContext:
    """A context for an erasure of Ada submitted with her email only."""
    keyring = load_keyring(settings)
    if request_id is None:
        request = submit(
            db,
            settings,
            keyring,
            Submission(
                RequestKind.ERASURE,
                Identities.of([parse_identity("email", "ada@example.com")]),
                dry_run=dry_run,
            ),
            sources=sources,
            operator="alice",
            now=NOW,
            dispatcher=RecordingDispatcher(),
        )
        request_id = request.id
    with db.session() as session:
        from compliance.models import DsrRequest

        subject = session.get_one(DsrRequest, request_id).subject
    return RunContext(
        settings=settings,
        db=db,
        keyring=keyring,
        sources=sources,
        request_id=request_id,
        subject=subject,
        identities=load_identities(db, keyring, request_id),
        dry_run=dry_run,
        clock=lambda: NOW,
    )


def test_erasure_erases_everywhere_verifies_and_returns_a_pii_free_receipt(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    ctx = request_ctx(db, settings, registry.sources)
    receipt = run_erasure(ctx)

    shop = snapshot(sample_dbs.shop_url)
    assert set(shop["users"]) == {(2,), (3,)}
    assert set(shop["loyalty_cards"]) == {(2,)}  # found through the CRM's customer number
    assert set(snapshot(sample_dbs.crm_url)["customers"]) == {(2,)}
    assert receipt["verified"] is True
    assert receipt["request_id"] == str(ctx.request_id)
    by_source = {s["source"]: s for s in receipt["sources"]}
    assert by_source["shop"]["retained"] == 1
    assert by_source["shop"]["anonymized"] == 2  # payments; references are counted apart
    assert (by_source["shop"]["detached"], by_source["shop"]["others"]) == (3, 1)
    assert by_source["crm"]["deleted"] == 2
    retained = [
        loc
        for loc in by_source["shop"]["locations"]
        if "retained" in loc and loc["scope"] == "subject"
    ]
    assert retained == [
        {
            "location": "invoices",
            "disposition": "retain",
            "retained": 1,
            "scope": "subject",
            "legal_basis": "Art. 6(1)(c) GDPR: commercial law, invoices kept 10 years",
        }
    ]
    blob = json.dumps(receipt).lower()
    for secret in ("ada@", "lovelace", "c-0001", "shared lane"):
        assert secret not in blob
    with db.session() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
        suppressed = session.get_one(Suppression, ctx.subject)
        assert set(suppressed.identity_hmacs) == {"email", "user_id", "customer_id"}
    assert actions.count("erasure.source_erased") == 2
    assert "erasure.verified" in actions


def test_discovered_identities_carry_a_resumed_erasure_past_deleted_links(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    """The shop is erased first (the users row linking email -> user id is gone); a
    later attempt still finds her CRM records through the stored user id."""
    first = request_ctx(db, settings, [registry.get("shop")])
    run_erasure(first)
    assert set(snapshot(sample_dbs.crm_url)["customers"]) == {(1,), (2,)}

    later = request_ctx(db, settings, registry.sources, request_id=first.request_id)
    assert later.identities.types() == {"email", "user_id"}
    run_erasure(later)
    assert set(snapshot(sample_dbs.crm_url)["customers"]) == {(2,)}
    assert set(snapshot(sample_dbs.crm_url)["tickets"]) == {(2,)}
    with db.session() as session:
        stored = session.scalars(
            select(DsrIdentity).where(DsrIdentity.request_id == first.request_id)
        ).all()
        assert {(i.type, i.discovered) for i in stored} == {("email", False), ("user_id", True)}
        assert all(b"ada" not in (i.value_sealed or b"") for i in stored)


def test_discover_runs_once_per_request(
    db: Database, settings: Settings, registry: Registry
) -> None:
    ctx = request_ctx(db, settings, registry.sources)
    found = discover(ctx)
    assert found.types() == {"email", "user_id", "customer_id"}
    again = discover(request_ctx(db, settings, [], request_id=ctx.request_id))
    assert again == found  # read back, not resolved (no sources were given)


def test_a_dry_run_writes_nothing_and_returns_the_plan(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    before = snapshot(sample_dbs.shop_url), snapshot(sample_dbs.crm_url)
    ctx = request_ctx(db, settings, registry.sources, dry_run=True)
    result = run_erasure(ctx)
    assert result["dry_run"] is True
    shop = next(s for s in result["sources"] if s["source"] == "shop")
    orders = {
        "location": "orders",
        "disposition": "delete",
        "deleted": 2,
        "scope": "subject",
        "legal_basis": "Art. 6(1)(b) GDPR: performance of a contract",  # the shop's, inherited
    }
    assert orders in shop["locations"]
    assert (snapshot(sample_dbs.shop_url), snapshot(sample_dbs.crm_url)) == before
    with db.session() as session:
        discovered = session.scalars(
            select(DsrIdentity).where(DsrIdentity.discovered.is_(True))
        ).all()
    assert discovered == []


class LeakySource(FakeSource):
    """Erases nothing and says so when verified."""

    def verify(self, identities: Any) -> list[Residue]:
        return [Residue("leaky/things", 2)]


def test_residue_fails_loudly_and_reopens_the_erase_step(
    db: Database, settings: Settings, registry: Registry
) -> None:
    leaky = LeakySource("leaky", "")
    ctx = request_ctx(db, settings, [*registry.sources, leaky])
    with pytest.raises(ResidualDataError, match=r"leaky/things: 2") as caught:
        run_erasure(ctx)
    assert "ada" not in str(caught.value).lower()
    with db.session() as session:
        steps = {
            (s.source, s.action): s
            for s in session.scalars(select(DsrStep).where(DsrStep.request_id == ctx.request_id))
        }
        assert steps[("leaky", "erase")].status == "pending"
        assert steps[("leaky", "verify")].status == "failed"
        assert steps[("leaky", "verify")].counts["residue"] == 2
        assert steps[("shop", "erase")].status == "done"
        assert steps[("shop", "verify")].status == "done"


def test_strict_mode_refuses_erasure_while_the_manifest_has_gaps(
    db: Database, settings: Settings, sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    engine = create_engine(sample_dbs.shop_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE leads (id INTEGER PRIMARY KEY, email TEXT)"))
    engine.dispose()
    before = snapshot(sample_dbs.shop_url)
    registry = load(sample_dbs, tmp_path)
    try:
        ctx = request_ctx(db, settings.with_overrides(strict_sources=True), registry.sources)
        with pytest.raises(UnsupportedError, match=r"shop: leads: columns that look personal"):
            run_erasure(ctx)
    finally:
        registry.close()
    assert snapshot(sample_dbs.shop_url) == before


def test_erase_chunk_stops_at_its_deadline_and_the_next_chunk_resumes(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    ctx = request_ctx(db, settings.with_overrides(batch_size=1), registry.sources)
    identities = discover(ctx)
    chunks = 0
    while erase_chunk(ctx, identities, max_seconds=0):
        chunks += 1
        assert chunks < 200
    assert chunks > 20  # one batch per chunk
    assert set(snapshot(sample_dbs.shop_url)["users"]) == {(2,), (3,)}
    with db.session() as session:
        erase_steps = session.scalars(
            select(DsrStep).where(DsrStep.request_id == ctx.request_id, DsrStep.action == "erase")
        ).all()
    assert {s.status for s in erase_steps} == {"done"}
    shop_step = next(s for s in erase_steps if s.source == "shop")
    assert shop_step.counts["retained"] == 1
    reread = StepLog(
        db, ctx.request_id, claim=None, clock=lambda: NOW, lease_seconds=60, keyring=ctx.keyring
    )
    assert reread.get("shop", "erase").checkpoint.get("orphans") is None  # keys dropped when done


class OneShotSource(FakeSource):
    def erase(self, identities: Any, checkpoint: Any, batch_size: int) -> EraseResult:
        return EraseResult(done=True, deleted=3)


def test_a_finished_source_is_never_erased_again(db: Database, settings: Settings) -> None:
    source = OneShotSource("once", "")
    ctx = request_ctx(db, settings, [source])
    first = run_erasure(ctx)
    second = run_erasure(request_ctx(db, settings, [source], request_id=ctx.request_id))
    assert first["deleted"] == second["deleted"] == 3


# Ada's erasure saves its steps (each save renews the lease: one UPDATE of the request):
# discovery; per source its plan, each chunk that changed rows and the last one; the
# verification. The shop changes rows in 13 tables (statement counts in
# sources/test_sql_statements.py: 7 + 3 deleted, payments anonymised, the address only
# she used, her invoice retained), the CRM in 2; a chunk goes on to the next table while
# its tables held fewer rows than a batch, so each source's rows are one chunk, the last.
# The shop's first chunk found the address only she used, whose key must be kept before
# her rows that lead to it go: saved too. Chunks that change nothing (a table found
# empty, the move to the next) are saved with the next one. Before the chunks went on
# from table to table: 21 saves (13 and 2 chunks); before that, 35.
SHOP_CHUNKS, CRM_CHUNKS = 1, 1
SAVES = 1 + (1 + 1 + SHOP_CHUNKS) + (1 + CRM_CHUNKS) + 1


def test_an_erasure_saves_its_steps_once_per_chunk_that_changed_rows(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    ctx = request_ctx(db, settings, registry.sources)
    with recorded(db.engine) as seen:
        receipt = run_erasure(ctx)
    saves = [s for s, _ in seen if s.startswith("UPDATE dsr_request SET updated_at")]
    assert len(saves) == SAVES, "\n".join(s[:100] for s, _ in seen)
    assert receipt["verified"] is True
    assert set(snapshot(sample_dbs.shop_url)["users"]) == {(2,), (3,)}


class _KilledError(Exception):
    """The worker running the erasure died."""


class _StopsAfter:
    """A source whose erasure is killed after `calls` chunks (its worker died)."""

    def __init__(self, source: DataSource, calls: int) -> None:
        self._source, self._left = source, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def erase(self, identities: Identities, checkpoint: Any, batch_size: int) -> EraseResult:
        if self._left == 0:
            raise _KilledError
        self._left -= 1
        return self._source.erase(identities, checkpoint, batch_size)  # type: ignore[no-any-return]


def test_the_shared_rows_only_the_subject_used_are_saved_before_her_rows_that_lead_to_them_go(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    """The shop's first chunk finds the address only Ada used and erases nothing; the
    next would delete her orders and user row, after which nothing leads to that address.
    A worker killed during that next chunk must find the address's key stored."""
    shop = next(s for s in registry.sources if s.name == "shop")
    ctx = request_ctx(db, settings, [_StopsAfter(shop, calls=1)])  # type: ignore[list-item]
    with pytest.raises(_KilledError):
        erase_chunk(ctx, discover(ctx), max_seconds=None)
    stored = StepLog(
        db, ctx.request_id, claim=None, clock=lambda: NOW, lease_seconds=60, keyring=ctx.keyring
    ).get("shop", "erase")
    assert stored.checkpoint["orphans"] == {"addresses": [[11]]}
    assert stored.checkpoint["table"] == 0  # nothing erased yet
