"""Suppression after a restore: an erased subject a backup brings back is erased again.

The sample shop and CRM on PostgreSQL, the real worker and erasure runner. A backup is
every row of both databases copied into Python; a restore puts exactly those rows back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import MetaData, Table, and_, create_engine, insert, select, text, update

from compliance.cli.context import App
from compliance.cli.suppression_cmd import suppression
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.dispatch import RecordingDispatcher
from compliance.errors import StateError
from compliance.identities import Identities, parse_identity
from compliance.keyring import Keyring, load_keyring
from compliance.models import AuditEvent, DsrIdentity, DsrRequest, RequestKind, Suppression
from compliance.requests import Submission, approve, submit
from compliance.sources.registry import Registry, load_registry
from compliance.suppression import NOTE, Found, Outcome, Reapply, ReapplyContext, origin, reapply
from compliance.worker import Outcome as Run
from compliance.worker import Worker, execute
from tasks.runtime import run_erasure
from tests.compliance.helpers import NOW
from tests.compliance.sources.sqlsample import snapshot
from tests.sample_app import schema
from tests.sample_app.fixtures import SampleDatabases

ADA = Identities.of([parse_identity("email", "ada@example.com")])
CY = Identities.of([parse_identity("email", "cy@example.com")])
LATER = NOW + timedelta(days=30)  # the restore, and what follows it
Rows = dict[str, list[dict[str, Any]]]


@dataclass
class Shop:
    """The sample databases, a PostgreSQL control database, and a worker over them."""

    settings: Settings
    db: Database
    keyring: Keyring
    registry: Registry
    dbs: SampleDatabases
    now: datetime = NOW
    dispatcher: RecordingDispatcher = field(default_factory=RecordingDispatcher)

    def databases(self) -> list[tuple[str, MetaData]]:
        return [(self.dbs.shop_url, schema.SHOP), (self.dbs.crm_url, schema.CRM)]

    def erase(self, identities: Identities) -> uuid.UUID:
        """An operator's erasure, approved by a second one and run to its end."""
        request = submit(
            self.db,
            self.settings,
            self.keyring,
            Submission(RequestKind.ERASURE, identities),
            sources=self.registry.sources,
            operator="alice",
            now=self.now,
            dispatcher=RecordingDispatcher(),
        )
        approve(
            self.db,
            self.settings,
            request.id,
            operator="bob",
            now=self.now,
            dispatcher=RecordingDispatcher(),
        )
        assert self.run(request.id) == Run.COMPLETED
        return request.id

    def run(self, request_id: uuid.UUID) -> Run:
        worker = Worker(
            settings=self.settings,
            db=self.db,
            keyring=self.keyring,
            sources=self.registry.sources,
            runners={RequestKind.ERASURE: run_erasure},
            clock=lambda: self.now,
        )
        return execute(worker, request_id)

    def reapply(self, *, dry_run: bool = False, **kw: Any) -> Reapply:
        ctx = ReapplyContext(
            settings=self.settings,
            db=self.db,
            keyring=self.keyring,
            sources=self.registry.sources,
            dispatcher=self.dispatcher,
            operator="carol",
            now=self.now,
        )
        return reapply(ctx, dry_run=dry_run, **kw)

    def backup(self) -> list[Rows]:
        return [_copy(url, meta) for url, meta in self.databases()]

    def restore(self, backup: list[Rows]) -> None:
        for (url, meta), rows in zip(self.databases(), backup, strict=True):
            _put_back(url, meta, rows)

    def state(self) -> list[Any]:
        return [snapshot(url) for url, _ in self.databases()]

    def emails(self) -> set[str]:
        return {row["email"].lower() for row in snapshot(self.dbs.shop_url)["users"].values()}

    def gdpr(self, *args: str) -> Result:
        app = App()
        app._cache.update(
            settings=self.settings,
            db=self.db,
            keyring=self.keyring,
            dispatcher=self.dispatcher,
            registry=self.registry,
            registry_live=True,
        )
        app.now = lambda: self.now  # type: ignore[method-assign]
        return CliRunner().invoke(suppression, list(args), obj=app)

    def requests(self) -> list[DsrRequest]:
        with self.db.session() as session:
            return list(session.scalars(select(DsrRequest).order_by(DsrRequest.submitted_at)))


def _copy(url: str, meta: MetaData) -> Rows:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.name: [dict(r) for r in conn.execute(select(t)).mappings()]
                for t in meta.sorted_tables
            }
    finally:
        engine.dispose()


def _put_back(url: str, meta: MetaData, rows: Rows) -> None:
    """Replace every table's rows with the backup's. References within a table or
    around a cycle (`use_alter` foreign keys) are filled in once every row is back."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            names = ", ".join(t.name for t in meta.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
            later: list[tuple[Table, dict[str, Any], dict[str, Any]]] = []
            for table in meta.sorted_tables:
                cyclic = {
                    fk.parent.name
                    for fk in table.foreign_keys
                    if (fk.constraint is not None and fk.constraint.use_alter)
                    or fk.column.table is table
                }
                for row in rows[table.name]:
                    conn.execute(insert(table), {**row, **dict.fromkeys(cyclic)})
                    later.append((table, row, {c: row[c] for c in cyclic if row[c] is not None}))
            for table, row, values in later:
                if values:
                    key = and_(*(c == row[c.name] for c in table.primary_key.columns))
                    conn.execute(update(table).where(key).values(values))
    finally:
        engine.dispose()


@pytest.fixture
def shop(pg_sample_dbs: SampleDatabases, pg_settings: Settings, tmp_path: Path) -> Iterator[Shop]:
    manifest = pg_sample_dbs.write_manifest(tmp_path)
    settings = pg_settings.with_overrides(sources=str(manifest))
    db = Database.connect(settings)
    db.upgrade()
    keyring = load_keyring(settings)
    registry = load_registry(settings, environ={}, pseudonym_key=keyring.pseudonym_key)
    try:
        yield Shop(settings, db, keyring, registry, pg_sample_dbs)
    finally:
        registry.close()
        db.dispose()


def _suppressed(shop: Shop) -> dict[str, Suppression]:
    with shop.db.session() as session:
        return {row.subject: row for row in session.scalars(select(Suppression))}


# --- the path of a restore --------------------------------------------------------------


def test_a_restored_subject_is_erased_again_and_one_not_in_the_backup_is_not_found(
    shop: Shop,
) -> None:
    shop.erase(CY)  # before the backup: the backup does not hold Cy
    backup = shop.backup()
    first = shop.erase(ADA)
    erased = shop.state()
    [ada] = [s for s, row in _suppressed(shop).items() if row.request_id == first]

    shop.now = LATER
    shop.restore(backup)
    assert "ada@example.com" in shop.emails() and "cy@example.com" not in shop.emails()

    result = shop.reapply()
    assert (result.checked, result.searched) == (2, ("shop", "crm"))
    [found] = result.found
    assert (found.subject, found.original_request_id) == (ada, first)
    assert found.sources == ("shop", "crm")
    assert found.counts == {"customer_id": 1, "email": 1, "user_id": 1}
    assert found.outcome == Outcome.QUEUED and found.request_id is not None
    again = found.request_id
    assert shop.dispatcher.dispatched == [again]

    with shop.db.session() as session:
        queued = session.get_one(DsrRequest, again)
        sealed = session.scalars(select(DsrIdentity).where(DsrIdentity.request_id == again)).all()
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert (queued.status, queued.subject, queued.origin) == ("queued", ada, origin(ada))
    assert (queued.note, queued.notify, queued.submitted_by) == (NOTE, False, "carol")
    assert {i.type for i in sealed} == {"email", "user_id", "customer_id"}
    assert all(i.value_sealed for i in sealed)
    [link] = [e for e in events if e.action == "suppression.reapply"]
    assert (link.request_id, link.subject) == (again, ada)
    assert link.details["original_request_id"] == str(first)
    assert link.details["sources"] == ["shop", "crm"]
    trail = json.dumps([e.details for e in events])
    assert "ada@example.com" not in trail and "C-0001" not in trail

    assert shop.run(again) == Run.COMPLETED
    assert shop.state() == erased  # Ada gone again; Bob's and everyone's rows as before
    assert "bob@example.com" in shop.emails() and "ada@example.com" not in shop.emails()
    with shop.db.session() as session:
        done = session.get_one(DsrRequest, again)
    assert done.status == "completed" and done.receipt is not None
    assert done.receipt["verified"] is True and done.receipt["deleted"] > 0
    assert _suppressed(shop)[ada].request_id == again

    nothing = shop.reapply()
    assert (nothing.checked, nothing.found) == (2, ())
    assert shop.dispatcher.dispatched == [again]


def test_reapplying_twice_before_a_worker_runs_queues_one_erasure(shop: Shop) -> None:
    backup = shop.backup()
    shop.erase(ADA)
    shop.now = LATER
    shop.restore(backup)

    [first] = shop.reapply().found
    [second] = shop.reapply().found
    assert first.outcome == Outcome.QUEUED
    assert (second.outcome, second.request_id) == (Outcome.OPEN, first.request_id)
    assert shop.dispatcher.dispatched == [first.request_id]
    assert [r.origin for r in shop.requests()] == [None, origin(first.subject)]


def test_a_second_reapply_while_one_runs_is_refused(shop: Shop) -> None:
    shop.erase(ADA)
    refused: list[StateError] = []

    def meanwhile(_checked: int) -> None:
        with pytest.raises(StateError, match="another suppression reapply is running") as info:
            shop.reapply()
        refused.append(info.value)

    shop.reapply(progress=meanwhile)
    assert len(refused) == 1
    assert shop.reapply(dry_run=True, progress=lambda _: shop.reapply()).found == ()


def test_data_that_also_names_someone_else_is_not_erased(shop: Shop) -> None:
    shop.erase(ADA)
    engine = create_engine(shop.dbs.shop_url)  # Ada's user id given out again, to Eve
    try:
        with engine.begin() as conn:
            conn.execute(insert(schema.users), {"id": 1, "email": "eve@example.com", "name": "Eve"})
    finally:
        engine.dispose()

    [found] = shop.reapply().found
    assert (found.outcome, found.sources, found.counts) == (
        Outcome.CONFLICT,
        ("shop",),
        {"user_id": 1},
    )
    result = shop.gdpr("reapply")
    assert result.exit_code == 1
    assert "not erased: the data found also names someone else" in result.output
    assert "erased by request" in result.output
    assert shop.dispatcher.dispatched == [] and len(shop.requests()) == 1
    assert "eve@example.com" in shop.emails()


# --- the command ------------------------------------------------------------------------


def test_the_command_lists_pseudonyms_and_counts_queues_and_reports(shop: Shop) -> None:
    empty = shop.gdpr("reapply")
    assert (empty.exit_code, empty.output) == (0, "Nothing to do: the suppression list is empty.\n")
    backup = shop.backup()
    shop.erase(ADA)
    [ada] = _suppressed(shop)
    shop.now = LATER
    shop.restore(backup)

    dry = shop.gdpr("reapply", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == [
        f"{ada[:15]}  found in shop, crm  would queue an erasure"
        " (customer_id 1, email 1, user_id 1)",
        "1 of 1 suppressed subject(s) found again in shop, crm: 1 would be queued"
        " (dry run: nothing queued)",
    ]
    assert len(shop.requests()) == 1 and shop.dispatcher.dispatched == []

    queued = shop.gdpr("reapply", "--json", "--ticket", "OPS-77")
    assert queued.exit_code == 0, queued.output
    data = json.loads(queued.output)
    assert (data["checked"], data["found"], data["queued"], data["dry_run"]) == (1, 1, 1, False)
    [subject] = data["subjects"]
    assert (subject["subject"], subject["sources"]) == (ada, ["shop", "crm"])
    assert shop.requests()[-1].ticket == "OPS-77"

    shown = shop.gdpr("reapply")
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[0] == (
        f"{ada[:15]}  found in shop, crm  erasure already open: {subject['request_id']}"
    )
    for output in (dry.output, queued.output, shown.output):
        assert "ada@example.com" not in output.lower() and "C-0001" not in output

    assert shop.run(uuid.UUID(subject["request_id"])) == Run.COMPLETED
    done = shop.gdpr("reapply")
    assert done.output == "Nothing to do: none of 1 suppressed subject(s) is in shop, crm again.\n"


# --- every subject restored, one receipt each; and on beat's schedule -------------------


def _receipts(shop: Shop, found: tuple[Found, ...]) -> dict[str, dict[str, Any]]:
    """Run each re-erasure to its end: subject pseudonym -> its request's receipt."""
    receipts = {}
    for again in found:
        assert again.outcome == Outcome.QUEUED and again.request_id is not None
        assert shop.run(again.request_id) == Run.COMPLETED
        with shop.db.session() as session:
            done = session.get_one(DsrRequest, again.request_id)
        assert (done.status, done.subject, done.origin) == (
            "completed",
            again.subject,
            origin(again.subject),
        )
        assert done.receipt is not None
        receipts[again.subject] = done.receipt
    return receipts


def test_each_subject_a_restore_brought_back_is_erased_again_with_its_own_receipt(
    shop: Shop,
) -> None:
    backup = shop.backup()
    firsts = [shop.erase(ADA), shop.erase(CY)]
    erased = shop.state()
    subjects = {row.request_id: s for s, row in _suppressed(shop).items()}

    shop.now = LATER
    shop.restore(backup)
    assert {"ada@example.com", "cy@example.com"} <= shop.emails()

    result = shop.reapply()
    assert sorted(f.original_request_id for f in result.found) == sorted(firsts)
    receipts = _receipts(shop, result.found)
    assert set(receipts) == {subjects[r] for r in firsts}  # one receipt per subject
    for receipt in receipts.values():
        assert receipt["verified"] is True and receipt["deleted"] > 0
    assert shop.state() == erased  # both gone again; everyone else's rows as before
    again = {f.subject: f.request_id for f in result.found}
    assert {s: row.request_id for s, row in _suppressed(shop).items()} == again
    assert shop.reapply().found == ()


def test_beat_reapplies_the_suppression_list_through_the_task(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import app as celery_app
    from tasks import maintenance, runtime

    backup = shop.backup()
    first = shop.erase(ADA)
    shop.restore(backup)
    shop.settings.home.mkdir(parents=True, exist_ok=True)  # the embedded broker's folder
    before = dict(celery_app._state)
    celery_app.configure(shop.settings)
    runtime.reset()
    try:
        counts = maintenance.reapply_suppression()
    finally:
        runtime.reset()
        celery_app._state.clear()
        celery_app._state.update(before)
    assert counts == {"checked": 1, "queued": 1, "open": 0, "conflict": 0, "would_queue": 0}
    queued = shop.requests()[-1]
    [still] = shop.reapply().found  # the task left no lock behind; its erasure is open
    assert (still.outcome, still.request_id) == (Outcome.OPEN, queued.id)
    assert (queued.status, queued.submitted_by) == ("queued", maintenance.SUPPRESSION_ACTOR)
    shop.now = utcnow()
    assert shop.run(queued.id) == Run.COMPLETED
    with shop.db.session() as session:
        done = session.get_one(DsrRequest, queued.id)
        reapplied = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "suppression.reapply")
        ).all()
    assert done.receipt is not None and done.receipt["verified"] is True
    assert [(e.actor, e.details["original_request_id"]) for e in reapplied] == [
        (maintenance.SUPPRESSION_ACTOR, str(first))
    ]
    assert "ada@example.com" not in shop.emails()
