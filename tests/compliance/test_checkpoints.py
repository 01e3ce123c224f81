"""Checkpoints of the audit chain in object storage: written once per head, signed, and
checked by `verify` against the chain, so a rewrite with every hash recomputed, events cut
from the end and a forged checkpoint file are all caught; on SQLite and PostgreSQL, in a
storage folder and on the local S3-compatible server."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import TextClause, select, text

from compliance import audit, checkpoints
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.keyring import Keyring
from compliance.models import AuditEvent
from exporters.storage import ObjectStorage, open_storage


@pytest.fixture
def keyring() -> Keyring:
    return Keyring({"k1": os.urandom(32), "k2": os.urandom(32)}, "k2", os.urandom(32))


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStorage:
    if request.param == "file":
        return open_storage(Settings(storage_url=(tmp_path / "objects").as_uri()))
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_storage(Settings(storage_url=f"s3://{bucket}/gdpr", s3_endpoint_url=endpoint))


def _record(db: Database, count: int, *, start: int = 0) -> None:
    with db.session() as session:
        for number in range(start, start + count):
            details = {"n": number}
            audit.record(session, actor="alice", action="test.event", now=utcnow(), details=details)


def _checkpoint(
    db: Database, storage: ObjectStorage, keyring: Keyring, minutes: int = 0
) -> checkpoints.Written | None:
    with db.session() as session:
        now = utcnow() + timedelta(minutes=minutes)
        return checkpoints.write(session, storage, keyring, now)


def _verify(db: Database, storage: ObjectStorage, keyring: Keyring) -> checkpoints.Verdict:
    with db.session() as session:
        return checkpoints.verify(session, storage, keyring)


def _chain_alone_verifies(db: Database) -> bool:
    with db.session() as session:
        return audit.verify_chain(session).ok


def _tampering(db: Database) -> TextClause:
    """Direct SQL as the database's superuser: PostgreSQL's append-only triggers off."""
    return text("SET LOCAL session_replication_role = replica")


def test_a_checkpoint_records_the_head_once_and_names_it_in_its_key(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    assert _checkpoint(db, storage, keyring) is None  # an empty chain: nothing to record
    assert list(storage.keys(checkpoints.PREFIX)) == []
    _record(db, 3)
    first = _checkpoint(db, storage, keyring)
    assert first is not None and first.created
    point = first.checkpoint
    assert (point.events, point.key_id) == (3, "k2")
    assert point.key.startswith("audit-checkpoints/") and point.key.endswith(
        f"{point.seq:012d}.json"
    )
    again = _checkpoint(db, storage, keyring, minutes=5)
    assert again is not None and not again.created and again.checkpoint == point
    assert list(storage.keys(checkpoints.PREFIX)) == [point.key]
    _record(db, 1, start=3)
    later = _checkpoint(db, storage, keyring, minutes=10)
    assert later is not None and later.created and later.checkpoint.events == 4
    assert sorted(storage.keys(checkpoints.PREFIX)) == [point.key, later.checkpoint.key]


def test_the_summary_holds_the_head_and_nothing_else(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 2)
    written = _checkpoint(db, storage, keyring)
    assert written is not None
    summary = checkpoints.summary(written.checkpoint)
    assert set(summary) == {"key", "seq", "hash", "events", "at", "written_at", "key_id"}
    stored = json.loads(b"".join(storage.download(written.checkpoint.key)))
    assert stored["hash"] == summary["hash"] and stored["signature"]


def test_verify_passes_on_an_intact_chain_with_checkpoints(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 3)
    _checkpoint(db, storage, keyring)
    _record(db, 2, start=3)
    written = _checkpoint(db, storage, keyring, minutes=1)
    _record(db, 1, start=5)  # the chain may run past its newest checkpoint
    verdict = _verify(db, storage, keyring)
    assert verdict.ok, verdict
    assert (verdict.chain.checked, verdict.checkpoints) == (6, 2)
    assert written is not None and verdict.newest == written.checkpoint.seq


def test_a_whole_chain_rewritten_with_every_hash_recomputed_is_caught(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 4)
    written = _checkpoint(db, storage, keyring)
    assert written is not None
    rewritten = _rewritten(db, actor="mallory")
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(_tampering(db))
        conn.execute(
            text("UPDATE audit_event SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s"),
            rewritten,
        )
    assert _chain_alone_verifies(db)  # the links alone cannot show a rewrite
    verdict = _verify(db, storage, keyring)
    assert not verdict.ok
    assert verdict.first_bad == written.checkpoint.seq
    (problem,) = verdict.problems
    assert "rewritten" in problem.reason and problem.key == written.checkpoint.key


def test_events_cut_from_the_end_of_the_chain_are_caught(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 5)
    written = _checkpoint(db, storage, keyring)
    assert written is not None
    head = written.checkpoint.seq
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(_tampering(db))
        conn.execute(text("DELETE FROM audit_event WHERE seq > :s"), {"s": head - 2})
    assert _chain_alone_verifies(db)
    verdict = _verify(db, storage, keyring)
    assert not verdict.ok and verdict.chain.ok
    assert verdict.first_bad == head
    (problem,) = verdict.problems
    assert f"the chain ends at event {head - 2}" in problem.reason


def test_a_forged_checkpoint_file_is_reported_as_tampered(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 2)
    written = _checkpoint(db, storage, keyring)
    assert written is not None
    body = json.loads(b"".join(storage.download(written.checkpoint.key)))
    forged = {**body, "seq": body["seq"] + 40, "events": 42}  # a head the chain never had
    forged_key = f"{checkpoints.PREFIX}2099-01-01T0000Z-{uuid.uuid4().hex[:6]}.json"
    storage.upload(forged_key, [json.dumps(forged).encode()])
    storage.upload(f"{checkpoints.PREFIX}2099-01-02T0000Z-x.json", [b"not json"])
    verdict = _verify(db, storage, keyring)
    assert not verdict.ok and verdict.chain.ok
    reasons = {p.key: p.reason for p in verdict.problems}
    assert "tampered: its signature does not verify" in reasons[forged_key]
    assert "malformed" in reasons[f"{checkpoints.PREFIX}2099-01-02T0000Z-x.json"]
    assert all(p.seq is None for p in verdict.problems)
    assert verdict.newest == written.checkpoint.seq  # the good one still counts


def test_a_good_checkpoint_copied_under_another_name_is_reported(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 2)
    written = _checkpoint(db, storage, keyring)
    assert written is not None
    copy = f"{checkpoints.PREFIX}2099-01-01T0000Z-{written.checkpoint.seq:012d}.json"
    storage.upload(copy, storage.download(written.checkpoint.key))
    (problem,) = _verify(db, storage, keyring).problems
    assert (problem.key, problem.seq) == (copy, None) and "misplaced" in problem.reason


def test_a_checkpoint_signed_with_another_installations_key_does_not_verify(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 2)
    other = Keyring({"k2": os.urandom(32)}, "k2", keyring.pseudonym_key)
    _checkpoint(db, storage, other)
    verdict = _verify(db, storage, keyring)
    (problem,) = verdict.problems
    assert "signature does not verify" in problem.reason


def _rewritten(db: Database, *, actor: str) -> list[dict[str, object]]:
    """Every event with another actor, and every link and hash recomputed to match."""
    with db.session() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        session.expunge_all()
    prev, rows = audit.GENESIS, []
    for event in events:
        event.actor, event.prev_hash = actor, prev
        prev = audit.event_hash(event)
        rows.append({"a": actor, "p": event.prev_hash, "h": prev, "s": event.seq})
    return rows


def test_an_event_deleted_before_a_checkpoint_breaks_a_link_and_the_count(
    db: Database, storage: ObjectStorage, keyring: Keyring
) -> None:
    _record(db, 4)
    written = _checkpoint(db, storage, keyring)
    assert written is not None
    head = written.checkpoint.seq
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(_tampering(db))
        conn.execute(text("DELETE FROM audit_event WHERE seq = :s"), {"s": head - 2})
    verdict = _verify(db, storage, keyring)
    assert verdict.chain.broken_at == head - 1 and verdict.first_bad == head - 1
    (problem,) = verdict.problems
    assert problem.seq == head and "4 events up to it" in problem.reason
