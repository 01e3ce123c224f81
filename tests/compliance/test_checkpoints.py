"""The audit chain's head, checkpointed outside the database, catches a whole-chain rewrite,
events cut from its end and a forged checkpoint; and `gdpr audit log` reads the trail."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from compliance import audit, checkpoints
from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.dispatch import RecordingDispatcher
from compliance.keyring import load_keyring
from compliance.models import AuditEvent, RequestKind
from exporters.objects import ObjectStorage
from exporters.storage import open_storage
from tests.compliance.helpers import submit_request, write_small_manifest

Invoke = Callable[..., Result]


@pytest.fixture(params=["folder", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    """The test's settings with a storage folder, then the local S3-compatible server."""
    if request.param == "folder":
        return settings.with_overrides(storage_url=(tmp_path / "objects").as_uri())
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return settings.with_overrides(
        storage_url=f"s3://{bucket}/{tmp_path.name}", s3_endpoint_url=endpoint
    )


@pytest.fixture
def storage(store_settings: Settings) -> ObjectStorage:
    return open_storage(store_settings)


@pytest.fixture
def gdpr(db: Database, store_settings: Settings, tmp_path: Path) -> Invoke:
    manifest = write_small_manifest(tmp_path / "sources")

    def invoke(*args: str) -> Result:
        app = App()
        app._cache.update(
            settings=store_settings.with_overrides(sources=str(manifest), operator="alice"),
            db=db,
            dispatcher=RecordingDispatcher(),
        )
        app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    return invoke


def findings(db: Database, storage: ObjectStorage, settings: Settings) -> list[checkpoints.Finding]:
    with db.session() as session:
        return list(checkpoints.verify(session, storage, load_keyring(settings)))


def tampering(db: Database) -> Iterator[Session]:
    """A session allowed to change the trail (on PostgreSQL: a superuser, triggers off)."""
    with db.session() as session:
        if db.engine.dialect.name == "postgresql":
            session.execute(text("SET LOCAL session_replication_role = replica"))
        yield session


def rewrite_whole_chain(db: Database) -> None:
    """What someone with write access to the database could do: change the first event,
    then recompute every hash after it, so the chain verifies again."""
    for session in tampering(db):
        prev = audit.GENESIS
        for event in session.scalars(select(AuditEvent).order_by(AuditEvent.seq)):
            if event.seq == 1:
                event.actor = "mallory"
            event.prev_hash = prev
            event.hash = audit.event_hash(event)
            prev = event.hash
            session.flush()


def test_an_empty_chain_has_nothing_to_checkpoint(
    db: Database, storage: ObjectStorage, store_settings: Settings
) -> None:
    assert checkpoints.write(db, storage, load_keyring(store_settings), utcnow()) is None
    assert storage.keys(checkpoints.PREFIX) == []


def test_a_checkpoint_is_written_once_per_head_and_agrees_with_the_chain(
    db: Database, storage: ObjectStorage, store_settings: Settings
) -> None:
    keyring = load_keyring(store_settings)
    submit_request(db, store_settings, RequestKind.EXPORT)
    first = checkpoints.write(db, storage, keyring, utcnow())
    assert first is not None and first.events == first.seq >= 1
    again = checkpoints.write(db, storage, keyring, utcnow())
    assert again == first and storage.keys(checkpoints.PREFIX) == [checkpoints.key_for(first.seq)]
    submit_request(db, store_settings, RequestKind.EXPORT)
    second = checkpoints.write(db, storage, keyring, utcnow())
    assert second is not None and second.seq > first.seq
    assert len(storage.keys(checkpoints.PREFIX)) == 2
    assert findings(db, storage, store_settings) == []
    stored = b"".join(storage.download(checkpoints.key_for(second.seq))).decode()
    assert "ada@example.com" not in stored and json.loads(stored)["hash"] == second.hash


def test_a_rewrite_of_the_whole_chain_is_found_by_its_checkpoint(
    db: Database, storage: ObjectStorage, store_settings: Settings, gdpr: Invoke
) -> None:
    submit_request(db, store_settings, RequestKind.EXPORT)
    point = checkpoints.write(db, storage, load_keyring(store_settings), utcnow())
    assert point is not None
    rewrite_whole_chain(db)
    with db.session() as session:
        assert audit.verify_chain(session).ok  # the hashes alone no longer tell
    [found] = findings(db, storage, store_settings)
    assert found.seq == point.seq and "rewritten" in found.reason
    result = gdpr("audit", "verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["broken_at"] == point.seq


def test_events_cut_from_the_end_of_the_chain_are_found(
    db: Database, storage: ObjectStorage, store_settings: Settings, gdpr: Invoke
) -> None:
    submit_request(db, store_settings, RequestKind.EXPORT)
    point = checkpoints.write(db, storage, load_keyring(store_settings), utcnow())
    assert point is not None
    for session in tampering(db):
        session.execute(delete(AuditEvent).where(AuditEvent.seq >= point.seq))
    [found] = findings(db, storage, store_settings)
    assert found.seq == point.seq and "missing" in found.reason
    result = gdpr("audit", "verify")
    assert result.exit_code == 1
    assert f"event {point.seq} is missing" in result.stderr


def test_a_forged_checkpoint_is_reported(
    db: Database, storage: ObjectStorage, store_settings: Settings
) -> None:
    submit_request(db, store_settings, RequestKind.EXPORT)
    point = checkpoints.write(db, storage, load_keyring(store_settings), utcnow())
    assert point is not None
    key = checkpoints.key_for(point.seq)
    data = json.loads(b"".join(storage.download(key)))
    data["hash"] = "0" * 64
    storage.upload(key, [json.dumps(data).encode()])
    [found] = findings(db, storage, store_settings)
    assert "does not verify" in found.reason


def test_verify_and_checkpoint_through_the_cli(
    db: Database, store_settings: Settings, gdpr: Invoke
) -> None:
    assert "nothing to checkpoint" in gdpr("audit", "checkpoint").output
    submit_request(db, store_settings, RequestKind.EXPORT)
    written = gdpr("audit", "checkpoint")
    assert written.exit_code == 0 and "audit chain head: event" in written.output
    verified = gdpr("audit", "verify")
    assert verified.exit_code == 0
    assert "1 checkpoint(s) agree" in verified.output


# --- gdpr audit log --------------------------------------------------------------------------


def test_the_log_filters_by_request_subject_action_time_and_limit(
    db: Database, store_settings: Settings, gdpr: Invoke
) -> None:
    export = submit_request(db, store_settings, RequestKind.EXPORT)
    erasure = submit_request(db, store_settings, RequestKind.ERASURE)
    everything = json.loads(gdpr("audit", "log", "--json").stdout)
    assert [e["seq"] for e in everything] == sorted(e["seq"] for e in everything)
    by_request = json.loads(gdpr("audit", "log", "--request", str(export.id), "--json").stdout)
    assert by_request and {e["request_id"] for e in by_request} == {str(export.id)}
    by_email = gdpr("audit", "log", "--email", "ADA@example.com", "--json")
    assert {e["request_id"] for e in json.loads(by_email.stdout)} == {
        str(export.id),
        str(erasure.id),
    }
    assert "ada@example.com" not in by_email.stdout.lower()
    assert json.loads(gdpr("audit", "log", "--email", "bob@example.com", "--json").stdout) == []
    action = everything[-1]["action"]
    by_action = json.loads(gdpr("audit", "log", "--action", action, "--json").stdout)
    assert by_action and {e["action"] for e in by_action} == {action}
    assert len(json.loads(gdpr("audit", "log", "--limit", "1", "--json").stdout)) == 1
    assert json.loads(gdpr("audit", "log", "--since", "2999-01-01", "--json").stdout) == []
    recent = json.loads(gdpr("audit", "log", "--since", "3650d", "--json").stdout)
    assert len(recent) == len(everything)
    human = gdpr("audit", "log", "--request", str(erasure.id))
    assert human.exit_code == 0 and str(erasure.id) in human.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--email", "not-an-address"), "email"),
        (("--since", "yesterday-ish"), "--since must be a date or time"),
        (("--request", "12"), "request id"),
        (("--request", "7a1c1f0e-0000-4000-8000-000000000001"), "7a1c1f0e"),
    ],
)
def test_bad_log_filters_are_one_line(gdpr: Invoke, args: tuple[str, ...], says: str) -> None:
    result = gdpr("audit", "log", *args)
    assert result.exit_code == (3 if "7a1c1f0e" in says else 2)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0]
    assert "not-an-address" not in errors[0]
