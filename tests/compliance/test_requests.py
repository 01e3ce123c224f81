from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from compliance import audit, queries, requests
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.errors import (
    ConfigError,
    IllegalTransitionError,
    NotFoundError,
    PermissionDeniedError,
    StateError,
    ValidationError,
)
from compliance.identities import Identities, parse_identity, pseudonym
from compliance.models import AuditEvent, DsrIdentity, DsrRequest, RequestKind
from tests.compliance.helpers import NOW, answering, submit_request


def test_export_is_auto_approved_and_dispatched_after_commit(
    db: Database, settings: Settings
) -> None:
    dispatcher = RecordingDispatcher()
    created = submit_request(db, settings, RequestKind.EXPORT, dispatcher=dispatcher)
    assert created.status == "queued"
    assert dispatcher.dispatched == [created.id]


def test_erasure_waits_for_approval_and_is_not_dispatched(db: Database, settings: Settings) -> None:
    dispatcher = RecordingDispatcher()
    created = submit_request(db, settings, dispatcher=dispatcher)
    assert created.status == "awaiting_approval"
    assert dispatcher.dispatched == []


def test_due_date_is_one_calendar_month_clamped_to_month_end(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings)  # submitted 31 January
    assert created.due_at == datetime(2026, 2, 28, 9, 0, tzinfo=UTC)


def test_submitter_cannot_approve_their_own_erasure(db: Database, settings: Settings) -> None:
    created = submit_request(db, settings, operator="alice")
    with pytest.raises(PermissionDeniedError, match="four-eyes"):
        requests.approve(
            db, settings, created.id, operator="alice", now=NOW, dispatcher=RecordingDispatcher()
        )
    with db.session() as session:
        assert session.get_one(DsrRequest, created.id).status == "awaiting_approval"


def test_second_operator_approves_and_request_is_dispatched(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, operator="alice")
    dispatcher = RecordingDispatcher()
    approved = requests.approve(
        db, settings, created.id, operator="bob", now=NOW, dispatcher=dispatcher
    )
    assert (approved.status, approved.approved_by) == ("queued", "bob")
    assert dispatcher.dispatched == [created.id]


def test_four_eyes_can_be_switched_off_for_small_teams(db: Database, settings: Settings) -> None:
    solo = settings.with_overrides(four_eyes=False)
    created = submit_request(db, solo, operator="alice")
    approved = requests.approve(
        db, solo, created.id, operator="alice", now=NOW, dispatcher=RecordingDispatcher()
    )
    assert approved.status == "queued"


def test_illegal_transition_names_the_current_state_and_changes_nothing(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:
        events_before = session.query(AuditEvent).count()
    with pytest.raises(IllegalTransitionError, match="it is queued"):
        requests.retry(db, created.id, operator="bob", now=NOW, dispatcher=RecordingDispatcher())
    with db.session() as session:
        assert session.get_one(DsrRequest, created.id).status == "queued"
        assert session.query(AuditEvent).count() == events_before


def test_unknown_request_id_is_not_found(db: Database, settings: Settings) -> None:
    import uuid

    with pytest.raises(NotFoundError, match="no request with id"):
        requests.cancel(db, uuid.uuid4(), operator="bob", now=NOW)


def test_cancel_wipes_raw_identities_but_keeps_pseudonyms(db: Database, settings: Settings) -> None:
    created = submit_request(db, settings)
    requests.cancel(db, created.id, operator="bob", now=NOW, reason="duplicate")
    with db.session() as session:
        rows = session.scalars(
            select(DsrIdentity).where(DsrIdentity.request_id == created.id)
        ).all()
    assert rows
    assert all(r.value_sealed is None and r.value_hmac.startswith("ps_") for r in rows)


def test_reject_needs_a_reason(db: Database, settings: Settings) -> None:
    created = submit_request(db, settings)
    with pytest.raises(ValidationError, match="reason is required"):
        requests.reject(db, created.id, operator="bob", reason=" ", now=NOW)
    rejected = requests.reject(db, created.id, operator="bob", reason="not verified", now=NOW)
    assert rejected.status == "rejected"


def test_extend_adds_at_most_two_months_in_total(db: Database, settings: Settings) -> None:
    created = submit_request(db, settings)
    once = requests.extend(db, created.id, months=1, reason="complex", operator="bob", now=NOW)
    assert once.due_at == datetime(2026, 3, 28, 9, 0, tzinfo=UTC)
    with pytest.raises(ValidationError, match=r"by at most 1 month more .*; pass --months 1$"):
        requests.extend(db, created.id, months=2, reason="more", operator="bob", now=NOW)
    twice = requests.extend(db, created.id, months=1, reason="more", operator="bob", now=NOW)
    assert twice.extended_months == 2
    with pytest.raises(StateError, match="already extended by the most allowed, 2 months"):
        requests.extend(db, created.id, months=1, reason="again", operator="bob", now=NOW)


def test_extending_a_finished_request_is_refused_as_its_state(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings)
    requests.cancel(db, created.id, operator="bob", now=NOW)
    with pytest.raises(StateError, match="is cancelled; only an open request can be extended"):
        requests.extend(db, created.id, months=1, reason="late", operator="bob", now=NOW)


def test_overdue_lists_only_open_requests_past_due(db: Database, settings: Settings) -> None:
    open_one = submit_request(db, settings)
    closed = submit_request(db, settings)
    requests.cancel(db, closed.id, operator="bob", now=NOW)
    later = NOW + timedelta(days=60)
    overdue = queries.list_requests(db, now=later, overdue=True)
    assert [r.id for r in overdue] == [open_one.id]


def test_every_transition_is_audited_in_an_intact_chain_without_raw_identities(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings)
    requests.approve(
        db, settings, created.id, operator="bob", now=NOW, dispatcher=RecordingDispatcher()
    )
    with db.session() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        actions = [e.action for e in events]
        assert actions == ["request.submit", "request.await_approval", "request.approve"]
        assert {e.subject for e in events} == {created.subject}
        dumped = " ".join(f"{e.details} {e.subject} {e.actor}" for e in events)
        assert "ada" not in dumped
        assert audit.verify_chain(session).ok


def test_tampering_with_an_audit_event_is_detected(db: Database, settings: Settings) -> None:
    submit_request(db, settings)
    with db.session() as session:
        if db.engine.dialect.name == "postgresql":
            # append-only (migration 0002): only a superuser with the triggers off gets here
            session.execute(text("SET LOCAL session_replication_role = replica"))
        first = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).first()
        assert first is not None
        first.actor = "mallory"
    with db.session() as session:
        report = audit.verify_chain(session)
    assert not report.ok
    assert report.broken_at == first.seq


def test_note_with_control_characters_is_refused(db: Database, settings: Settings) -> None:
    from compliance.keyring import load_keyring
    from tests.compliance.helpers import ada

    bad = requests.Submission(kind=RequestKind.EXPORT, identities=ada(), note="x\x1b[31m")
    with pytest.raises(ValidationError, match="control characters"):
        requests.submit(
            db,
            settings,
            load_keyring(settings),
            bad,
            sources=answering(),
            operator="a",
            now=NOW,
            dispatcher=RecordingDispatcher(),
        )
    assert queries.list_requests(db, now=NOW) == []


def test_a_failed_request_can_be_given_up_which_wipes_every_sealed_identity(
    db: Database, settings: Settings
) -> None:
    from compliance.lifecycle import Event, transition

    created = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:
        transition(session, created.id, Event.CLAIM, actor="worker", now=NOW)
        session.add(
            DsrIdentity(
                request_id=created.id,
                type="customer_id",
                value_sealed=b"\x01ksealed",
                value_hmac="ps_discovered",
                discovered=True,
            )
        )
        transition(session, created.id, Event.FAIL, actor="worker", now=NOW)
    cancelled = requests.cancel(db, created.id, operator="bob", now=NOW, reason="subject withdrew")
    assert cancelled.status == "cancelled"
    with db.session() as session:
        sealed = session.scalars(
            select(DsrIdentity.value_sealed).where(DsrIdentity.request_id == created.id)
        ).all()
    assert len(sealed) == 3 and set(sealed) == {None}


def test_a_running_request_cannot_be_cancelled(db: Database, settings: Settings) -> None:
    from compliance.lifecycle import Event, transition

    created = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:
        transition(session, created.id, Event.CLAIM, actor="worker", now=NOW)
    with pytest.raises(IllegalTransitionError, match="it is running"):
        requests.cancel(db, created.id, operator="bob", now=NOW)


def test_giving_up_a_failed_export_revokes_its_download_links(
    db: Database, settings: Settings
) -> None:
    from compliance.lifecycle import Event, transition
    from compliance.models import DownloadLink

    created = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:
        transition(session, created.id, Event.CLAIM, actor="worker", now=NOW)
        session.add(
            DownloadLink(
                token_hash="a" * 64,
                request_id=created.id,
                created_at=NOW,
                expires_at=NOW + timedelta(days=7),
                max_downloads=3,
                downloads=0,
            )
        )
        transition(session, created.id, Event.FAIL, actor="worker", now=NOW)
    requests.cancel(db, created.id, operator="bob", now=NOW)
    with db.session() as session:
        link = session.scalars(select(DownloadLink)).one()
    assert link.revoked_at == NOW


def nothing_written(db: Database) -> bool:
    with db.session() as session:
        return session.query(DsrRequest).count() == session.query(AuditEvent).count() == 0


def test_an_erasure_no_source_can_look_up_is_refused_and_writes_nothing(
    db: Database, settings: Settings
) -> None:
    dispatcher = RecordingDispatcher()
    with pytest.raises(ConfigError) as caught:
        submit_request(db, settings, dispatcher=dispatcher, sources=answering("customer_id"))
    assert str(caught.value) == (
        "no registered source can look up a subject by email or user_id (they answer "
        "customer_id); register a source with an email or user_id identity column (or "
        "template) in the manifest (GDPR_SOURCES)"
    )
    assert nothing_written(db) and dispatcher.dispatched == []


def test_an_export_is_refused_and_writes_nothing_when_no_source_is_registered(
    db: Database, settings: Settings
) -> None:
    with pytest.raises(ConfigError, match=r"^no data source is registered, so none can look"):
        submit_request(db, settings, RequestKind.EXPORT, sources=())
    assert nothing_written(db)


def test_a_source_answering_one_of_the_identity_types_is_enough(
    db: Database, settings: Settings
) -> None:
    created = submit_request(db, settings, RequestKind.EXPORT, sources=answering("user_id"))
    assert created.status == "queued"


def test_malformed_input_is_reported_before_a_missing_source(
    db: Database, settings: Settings
) -> None:
    from compliance.keyring import load_keyring
    from tests.compliance.helpers import ada

    bad = requests.Submission(kind=RequestKind.EXPORT, identities=ada(), ticket="x" * 200)
    with pytest.raises(ValidationError, match="ticket is longer"):
        requests.submit(
            db,
            settings,
            load_keyring(settings),
            bad,
            sources=(),
            operator="a",
            now=NOW,
            dispatcher=RecordingDispatcher(),
        )


# --- the contact: the one address a request writes to -----------------------------------


def _submit(db: Database, settings: Settings, submission: requests.Submission) -> DsrRequest:
    from compliance.keyring import load_keyring

    return requests.submit(
        db,
        settings,
        load_keyring(settings),
        submission,
        sources=answering(),
        operator="alice",
        now=NOW,
        dispatcher=RecordingDispatcher(),
    )


def _emails(*values: str) -> Identities:
    return Identities.of(parse_identity("email", v) for v in values)


def test_two_email_addresses_without_a_contact_are_refused_and_nothing_is_stored(
    db: Database, settings: Settings
) -> None:
    both = requests.Submission(RequestKind.EXPORT, _emails("a@example.com", "b@example.com"))
    with pytest.raises(
        ValidationError, match=r"^2 email addresses given .* name it with --contact"
    ):
        _submit(db, settings, both)
    assert nothing_written(db)


def test_the_subject_is_known_by_the_pseudonym_of_the_named_contact(
    db: Database, settings: Settings
) -> None:
    from compliance.keyring import load_keyring

    key = load_keyring(settings).pseudonym_key
    for contact in ("a@example.com", "b@example.com"):
        named = parse_identity("email", contact)
        submission = requests.Submission(
            RequestKind.EXPORT, _emails("a@example.com", "b@example.com"), contact=named
        )
        assert _submit(db, settings, submission).subject == pseudonym(key, named)


def test_a_contact_that_is_not_one_of_the_addresses_is_refused(
    db: Database, settings: Settings
) -> None:
    stranger = parse_identity("email", "c@example.com")
    submission = requests.Submission(RequestKind.EXPORT, _emails("a@example.com"), contact=stranger)
    with pytest.raises(ValidationError, match="--contact must be one of the request's email"):
        _submit(db, settings, submission)
    assert nothing_written(db)


def test_a_retention_erasure_with_two_addresses_needs_no_contact(
    db: Database, settings: Settings
) -> None:
    both = requests.Submission(
        RequestKind.ERASURE,
        _emails("b@example.com", "a@example.com"),
        origin="retention:closed",
        pre_approved=True,
    )
    created = _submit(db, settings, both)
    assert created.status == "queued"


@pytest.mark.parametrize(
    ("field", "text", "what"),
    [
        ("ticket", "ada@example.com called", "an email address"),
        ("ticket", "call back +49 151 1234 5678", "a phone number"),
        ("note", "verified: user 4242 on the phone", "the subject's user_id"),
    ],
)
def test_operator_text_holding_personal_data_is_refused_and_nothing_is_stored(
    db: Database, settings: Settings, field: str, text: str, what: str
) -> None:
    identities = Identities.of(
        [parse_identity("email", "zoe@example.com"), parse_identity("user_id", "4242")]
    )
    submission = requests.Submission(RequestKind.EXPORT, identities, **{field: text})
    with pytest.raises(ValidationError, match=f"^{field} looks like it holds {what}; ") as info:
        _submit(db, settings, submission)
    assert text not in str(info.value)
    assert nothing_written(db)


def test_reasons_holding_an_email_address_are_refused(db: Database, settings: Settings) -> None:
    created = submit_request(db, settings)
    with pytest.raises(ValidationError, match="reason looks like it holds an email address"):
        requests.reject(db, created.id, operator="bob", reason="ada@example.com asked", now=NOW)
    assert queries.show(db, created.id)[0].status == "awaiting_approval"
