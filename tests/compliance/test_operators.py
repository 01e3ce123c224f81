"""Operators: identity from authentication, roles, and four-eyes the database enforces.

On PostgreSQL each operator connects with their own login (alice, bob, carol: logins of
the `pg_operator_urls` fixture); the tests connect as those logins, through the CLI and by
hand-written SQL, and prove each refusal. On the embedded database names are canonical and
`--operator` is recorded as claimed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from compliance import audit
from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.dispatch import RecordingDispatcher
from compliance.errors import PermissionDeniedError
from compliance.models import AuditEvent, DsrRequest, OperatorRole
from compliance.operators import canonical
from tests.compliance.helpers import write_small_manifest
from tests.support.services import login_of

Invoke = Callable[..., Result]


def events(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        return list(session.scalars(query))


def grant(db: Database, name: str, *roles: str) -> None:
    """Roles given by the installation's own login (the fixture's superuser connection)."""
    with db.session() as session:
        for role in roles:
            session.add(OperatorRole(name=name, role=role, granted_by="test", granted_at=utcnow()))


def cli_on(settings: Settings, db: Database, tmp_path: Path) -> Invoke:
    manifest = write_small_manifest(tmp_path / "sources")

    def invoke(*args: str) -> Result:
        app = App()
        app._cache.update(
            settings=settings.with_overrides(sources=str(manifest)),
            db=db,
            dispatcher=RecordingDispatcher(),
        )
        app.close = lambda: None  # type: ignore[method-assign]  # the test owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    return invoke


# --- PostgreSQL: the logins of two (three) people -------------------------------------------


class Logins:
    """alice, bob and carol, each with a CLI and a database connection of their own."""

    def __init__(self, settings: Settings, urls: dict[str, str], tmp_path: Path) -> None:
        self.names = {name: login_of(url) for name, url in urls.items()}
        self.dbs = {
            name: Database.connect(settings.with_overrides(database_url=url))
            for name, url in urls.items()
        }
        self.cli = {name: cli_on(settings, db, tmp_path) for name, db in self.dbs.items()}

    def sql(self, who: str, statement: str, **params: object) -> None:
        with self.dbs[who].engine.begin() as conn:
            conn.execute(text(statement), params)

    def close(self) -> None:
        for db in self.dbs.values():
            db.dispose()


@pytest.fixture
def logins(
    pg_settings: Settings, pg_operator_urls: dict[str, str], tmp_path: Path
) -> Iterator[Logins]:
    found = Logins(pg_settings, pg_operator_urls, tmp_path)
    yield found
    found.close()


@pytest.fixture
def owner(pg_settings: Settings) -> Iterator[Database]:
    """The installation's own login (the owner of the tables; here a superuser)."""
    db = Database.connect(pg_settings)
    db.upgrade()
    yield db
    db.dispose()


def submitted_erasure(logins: Logins, who: str = "alice") -> str:
    result = logins.cli[who]("request", "erase", "--email", "ada@example.com", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def request_row(db: Database, request_id: str) -> DsrRequest:
    with db.session() as session:
        return session.get_one(DsrRequest, uuid.UUID(request_id))


def refused(logins: Logins, who: str, statement: str, says: str, **params: object) -> None:
    with pytest.raises(DBAPIError) as caught:
        logins.sql(who, statement, **params)
    assert says in str(caught.value.orig)


def test_an_agent_cannot_approve_and_the_refusal_is_one_line_and_audited(
    owner: Database, logins: Logins
) -> None:
    alice = logins.names["alice"]
    grant(owner, alice, "agent")
    erasure = submitted_erasure(logins)
    result = logins.cli["alice"]("request", "approve", erasure)
    assert result.exit_code == 4
    assert result.output.strip().splitlines() == [
        f"error: {alice} may not approve erasures: that needs the approver role"
        f" (an admin runs `gdpr operator grant {alice} approver`)"
    ]
    assert request_row(owner, erasure).status == "awaiting_approval"
    [event] = events(owner, "operator.refused")
    assert (event.actor, event.details) == (
        alice,
        {"action": "approve erasures", "needs": "approver"},
    )


def test_the_submitter_is_the_session_login_whatever_the_client_says(
    owner: Database, logins: Logins
) -> None:
    alice, bob = logins.names["alice"], logins.names["bob"]
    grant(owner, alice, "agent", "approver")
    erasure = submitted_erasure(logins)
    assert request_row(owner, erasure).submitted_by == alice
    # by hand: a row that claims bob submitted it is recorded as alice's
    forged = uuid.uuid4()
    logins.sql(
        "alice",
        "INSERT INTO dsr_request (id, kind, status, subject, submitted_by, submitted_at,"
        " due_at, extended_months, updated_at, attempts, dry_run, notify)"
        " VALUES (:id, 'erasure', 'received', 'ps_x', :bob, now(), now(), 0, now(), 0,"
        " false, false)",
        id=forged,
        bob=bob,
    )
    assert request_row(owner, str(forged)).submitted_by == alice


def test_nobody_approves_their_own_erasure_not_even_with_a_direct_update(
    owner: Database, logins: Logins
) -> None:
    alice, bob = logins.names["alice"], logins.names["bob"]
    grant(owner, alice, "agent", "approver")
    grant(owner, bob, "agent", "approver")
    erasure = submitted_erasure(logins)
    result = logins.cli["alice"]("request", "approve", erasure)
    assert result.exit_code == 4 and "four-eyes" in result.output
    [event] = events(owner, "operator.refused")
    assert (event.actor, event.details["reason"]) == (alice, "four-eyes")
    refused(
        logins,
        "alice",
        "UPDATE dsr_request SET status = 'queued', approved_by = :bob WHERE id = :id",
        "cannot also approve it (four-eyes)",
        bob=bob,
        id=uuid.UUID(erasure),
    )
    assert request_row(owner, erasure).status == "awaiting_approval"
    approved = logins.cli["bob"]("request", "approve", erasure, "--json")
    assert approved.exit_code == 0, approved.output
    row = request_row(owner, erasure)
    assert (row.status, row.approved_by, row.submitted_by) == ("queued", bob, alice)


def test_an_operator_may_make_only_the_transitions_of_their_roles(
    owner: Database, logins: Logins
) -> None:
    alice, bob = logins.names["alice"], logins.names["bob"]
    grant(owner, alice, "agent")
    grant(owner, bob, "approver")  # approves, but may not submit
    erasure = submitted_erasure(logins)
    rid = uuid.UUID(erasure)
    refused(
        logins,
        "alice",
        "UPDATE dsr_request SET status = 'completed' WHERE id = :id",
        "may not move a request from awaiting_approval to completed",
        id=rid,
    )
    refused(
        logins,
        "alice",
        "UPDATE dsr_request SET receipt = '{}' WHERE id = :id",
        "may not change what was submitted",
        id=rid,
    )
    result = logins.cli["bob"]("request", "erase", "--email", "ada@example.com")
    assert result.exit_code == 4 and "needs the agent role" in result.output
    assert logins.cli["bob"]("request", "reject", erasure, "--reason", "T-2").exit_code == 0
    assert request_row(owner, erasure).status == "rejected"


def test_the_audit_trail_is_append_only_for_operators_and_the_owner(
    owner: Database, logins: Logins
) -> None:
    alice, bob = logins.names["alice"], logins.names["bob"]
    grant(owner, alice, "agent")
    submitted_erasure(logins)
    for statement in (
        "UPDATE audit_event SET actor = 'mallory'",
        "DELETE FROM audit_event",
        "TRUNCATE audit_event",
    ):
        with pytest.raises(DBAPIError) as caught, owner.engine.begin() as conn:
            conn.execute(text(statement))
        assert "append-only" in str(caught.value.orig) or "permission denied" in str(
            caught.value.orig
        )
        refused(logins, "alice", statement, "")
    with owner.session() as session:
        assert audit.verify_chain(session).ok
    # an event recorded under someone else's name is refused
    refusal = pytest.raises(PermissionDeniedError, match="may not record an event as")
    with refusal, logins.dbs["alice"].session() as session:
        audit.record(session, actor=bob, action="request.approved", now=utcnow())


def test_only_an_admin_changes_roles_and_holds(owner: Database, logins: Logins) -> None:
    alice, carol = logins.names["alice"], logins.names["carol"]
    grant(owner, alice, "agent")
    refused(
        logins,
        "alice",
        "INSERT INTO operator_role VALUES (:me, 'admin', :me, now())",
        "needs the admin role",
        me=alice,
    )
    result = logins.cli["alice"]("operator", "grant", alice, "admin")
    assert result.exit_code == 4 and "needs the admin role" in result.output
    grant(owner, carol, "admin")
    assert logins.cli["carol"]("operator", "grant", alice, "approver").exit_code == 0
    with owner.session() as session:
        roles = set(session.scalars(select(OperatorRole.role).where(OperatorRole.name == alice)))
    assert roles == {"agent", "approver"}
    [event] = events(owner, "operator.granted")
    assert event.actor == carol and event.details["roles"] == ["approver"]
    refused(
        logins,
        "alice",
        "INSERT INTO legal_hold (reason, legal_basis, created_by, created_at, identity_hmacs)"
        " VALUES ('M-1', 'Art. 17(3)(e)', 'x', now(), '[]')",
        "needs the admin role",
    )


def test_operator_is_refused_on_postgresql_and_whoami_names_the_login(
    owner: Database, logins: Logins
) -> None:
    alice = logins.names["alice"]
    grant(owner, alice, "agent")
    result = logins.cli["alice"]("--operator", "bob", "request", "export", "--email", "a@b.example")
    assert result.exit_code == 4 and "--operator is refused" in result.output
    who = logins.cli["alice"]("operator", "whoami", "--json")
    assert json.loads(who.stdout) == {
        "name": alice,
        "identified_by": "authenticated",
        "roles": ["agent"],
    }


def test_the_first_admin_is_granted_by_the_installations_own_login(
    owner: Database, logins: Logins, pg_settings: Settings, tmp_path: Path
) -> None:
    carol = logins.names["carol"]
    service = cli_on(pg_settings, owner, tmp_path)
    result = service("operator", "grant", carol, "admin")
    assert result.exit_code == 0, result.output
    listed = json.loads(service("operator", "list", "--json").stdout)
    assert [(o["name"], o["roles"]) for o in listed] == [(carol, ["admin"])]
    last = logins.cli["carol"]("operator", "revoke", carol, "admin")
    assert last.exit_code == 4 and "last admin" in last.output
    stranger = service("operator", "grant", "nobody-here", "agent")
    assert stranger.exit_code == 0
    assert 'CREATE ROLE "nobody-here" LOGIN' in stranger.stderr


# --- the embedded database -------------------------------------------------------------------


@pytest.fixture
def embedded(sqlite_settings: Settings, tmp_path: Path) -> Iterator[tuple[Database, Invoke]]:
    db = Database.connect(sqlite_settings)
    db.upgrade()
    yield db, cli_on(sqlite_settings, db, tmp_path)
    db.dispose()


def test_names_are_canonical_so_a_different_spelling_is_the_same_operator(
    embedded: tuple[Database, Invoke],
) -> None:
    db, run = embedded
    created = run("--operator", "alice", "request", "erase", "--email", "ada@example.com", "--json")
    erasure = json.loads(created.stdout)["id"]
    for spelling in ("ALICE", " alice ", "\uff21lice"):
        result = run("--operator", spelling, "request", "approve", erasure)
        assert result.exit_code == 4 and "four-eyes" in result.output, spelling
    assert run("--operator", "Bob", "request", "approve", erasure).exit_code == 0
    row = request_row(db, erasure)
    assert (row.submitted_by, row.approved_by) == ("alice", "bob")
    with db.session() as session:
        actors = set(session.scalars(select(AuditEvent.actor)))
    assert actors == {"alice", "bob"}


def test_a_claimed_name_is_recorded_as_claimed(embedded: tuple[Database, Invoke]) -> None:
    db, run = embedded
    grant(db, "carol", "admin")
    result = run("--operator", "mallory", "hold", "list")
    assert result.exit_code == 0  # viewing needs no role
    refused_ = run("--operator", "mallory", "request", "export", "--email", "ada@example.com")
    assert refused_.exit_code == 4 and "mallory may not submit requests" in refused_.output
    [event] = events(db, "operator.refused")
    assert event.details == {"action": "submit requests", "needs": "agent", "claimed": True}


def test_embedded_roles_apply_once_an_operator_is_registered(
    embedded: tuple[Database, Invoke],
) -> None:
    _, run = embedded
    assert run("--operator", "alice", "operator", "grant", "alice", "admin", "agent").exit_code == 0
    assert (
        run("--operator", "bob", "request", "export", "--email", "ada@example.com").exit_code == 4
    )
    assert run("--operator", "alice", "operator", "grant", "bob", "agent").exit_code == 0
    ok = run("--operator", "bob", "request", "export", "--email", "ada@example.com")
    assert ok.exit_code == 0, ok.output
    assert run("--operator", "alice", "operator", "revoke", "bob", "agent").exit_code == 0
    assert (
        run("--operator", "bob", "request", "export", "--email", "ada@example.com").exit_code == 4
    )


@pytest.mark.parametrize("name", ["", "   ", "a b", "x" * 65, "al\u202eice", "-lead", "a;drop"])
def test_a_hostile_operator_name_is_one_line_and_never_echoed(
    embedded: tuple[Database, Invoke], name: str
) -> None:
    _, run = embedded
    result = run("--operator", name, "request", "export", "--email", "ada@example.com")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "operator name is not valid" in lines[0]
    assert name.strip() == "" or name not in lines[0]


def test_canonical_folds_case_width_and_space() -> None:
    assert canonical("  \uff21lice.B ") == "alice.b"
    assert canonical("Straße") == "strasse"


def test_admins_resume_held_erasures_and_queue_retention_erasures_agents_do_not(
    owner: Database, logins: Logins
) -> None:
    alice, carol = logins.names["alice"], logins.names["carol"]
    grant(owner, alice, "agent")
    grant(owner, carol, "admin")
    held, retained = uuid.uuid4(), uuid.uuid4()
    with owner.engine.begin() as conn:  # the workers' login put them there
        for rid, status, origin in (
            (held, "on_hold", None),
            (retained, "received", "retention:logs"),
        ):
            conn.execute(
                text(
                    "INSERT INTO dsr_request (id, kind, status, subject, submitted_by,"
                    " submitted_at, due_at, extended_months, updated_at, attempts, dry_run,"
                    " notify, origin) VALUES (:id, 'erasure', :status, 'ps_x', 'retention',"
                    " now(), now(), 0, now(), 0, false, false, :origin)"
                ),
                {"id": rid, "status": status, "origin": origin},
            )
    resume = "UPDATE dsr_request SET status = 'queued' WHERE id = :id"
    refused(logins, "alice", resume, "needs the admin role", id=held)
    refused(logins, "alice", resume, "needs the admin role", id=retained)
    logins.sql("carol", resume, id=held)
    logins.sql("carol", resume, id=retained)
    assert {request_row(owner, str(r)).status for r in (held, retained)} == {"queued"}


def test_an_admin_places_and_releases_a_hold_with_their_own_login(
    owner: Database, logins: Logins
) -> None:
    carol = logins.names["carol"]
    grant(owner, carol, "admin")
    placed = logins.cli["carol"](
        "hold", "add", "--source", "app", "--reason", "M-7", "--basis", "Art. 17(3)(e)", "--json"
    )
    assert placed.exit_code == 0, placed.output
    hold_id = str(json.loads(placed.stdout)["id"])
    released = logins.cli["carol"]("hold", "release", hold_id, "--reason", "case closed")
    assert released.exit_code == 0, released.output
    assert {e.actor for e in events(owner, "hold.release")} == {carol}
