"""Key rotation: `keys status` tells what each key protects; `keys rotate` moves identity
values, retention cursors and package data keys to the newest key, in batches, resumably
and audited, until the old key protects nothing and can leave the keyring."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import StateError
from compliance.identities import Identity
from compliance.keyring import Keyring, sealed_key_id
from compliance.models import (
    AuditEvent,
    DsrIdentity,
    DsrRequest,
    ExportPackage,
    RetentionPart,
    RetentionRun,
)
from compliance.retention.runs import seal_cursor, unseal_cursor
from compliance.rotation import KeyStatus, key_status, rotate
from compliance.sealed import load_identities, sealed_identity
from exporters.crypto import SEGMENT_SIZE, decrypt_stream, encrypt_stream, keyring_wrapper
from exporters.rewrap import PackageRewrapper
from exporters.storage import FileStorage, ObjectStorage, open_storage

OLD, NEW = os.urandom(32), os.urandom(32)
PSEUDONYM = os.urandom(32)
BEFORE = Keyring({"k1": OLD}, "k1", PSEUDONYM)
BOTH = Keyring({"k1": OLD, "k2": NEW}, "k2", PSEUDONYM)  # the operator added k2, newest
AFTER = Keyring({"k2": NEW}, "k2", PSEUDONYM)  # ... and, after the rotation, removed k1
EMAILS = ["ada@example.com", "bo@example.com", "cy@example.com"]


@dataclass
class Seeded:
    identities: dict[uuid.UUID, str]  # request -> email
    cursors: dict[int, dict[str, Any]]  # part id -> cursor
    packages: dict[str, bytes]  # object key -> plaintext


def add_request(db: Database, now: datetime) -> uuid.UUID:
    request_id = uuid.uuid4()
    with db.session() as session:
        session.add(
            DsrRequest(
                id=request_id,
                kind="export",
                status="running",
                subject="ps_" + uuid.uuid4().hex,
                submitted_by="alice",
                submitted_at=now,
                due_at=now + timedelta(days=30),
                updated_at=now,
            )
        )
    return request_id


def add_package(
    db: Database, storage: ObjectStorage, request_id: uuid.UUID, data: bytes, expires: timedelta
) -> str:
    key = f"exports/{request_id}.zip.enc"
    blob = b"".join(encrypt_stream([data], keyring_wrapper(BEFORE)))
    storage.upload(key, [blob])
    now = utcnow()
    with db.session() as session:
        session.add(
            ExportPackage(
                request_id=request_id,
                object_key=key,
                size=len(blob),
                sha256=hashlib.sha256(blob).hexdigest(),
                key_id="k1",
                created_at=now,
                expires_at=now + expires,
            )
        )
    return key


def add_cursors(db: Database, count: int, now: datetime) -> dict[int, dict[str, Any]]:
    cursors = {}
    with db.session() as session:
        run = RetentionRun(
            policy="app.logs",
            kind="rows",
            cutoff=now,
            status="running",
            trigger="cli",
            actor="alice",
            counts={},
            started_at=now,
        )
        session.add(run)
        session.flush()
        for index in range(count):
            cursor = {"after": [1000 + index], "user": f"u-{index}"}
            part = RetentionPart(
                run_id=run.id,
                part=index,
                status="pending",
                cursor_sealed=seal_cursor(BEFORE, run.id, index, cursor),
                counts={},
                attempts=0,
                updated_at=now,
            )
            session.add(part)
            session.flush()
            cursors[part.id] = cursor
    return cursors


def seed(db: Database, storage: ObjectStorage, *, packages: int = 2) -> Seeded:
    """Three requests with a sealed email each, two retention cursors and `packages`
    stored packages, all under k1."""
    now = utcnow()
    identities, stored = {}, {}
    for index, email in enumerate(EMAILS):
        request_id = add_request(db, now)
        with db.session() as session:
            session.add(
                sealed_identity(BEFORE, request_id, Identity("email", email), discovered=False)
            )
        identities[request_id] = email
        if index < packages:
            data = os.urandom(SEGMENT_SIZE + 1000 * index)
            stored[add_package(db, storage, request_id, data, timedelta(days=30))] = data
    return Seeded(identities, add_cursors(db, 2, now), stored)


def assert_readable_without_the_old_key(
    db: Database, storage: ObjectStorage, seeded: Seeded
) -> None:
    for request_id, email in seeded.identities.items():
        assert load_identities(db, AFTER, request_id).values("email") == [email]
    with db.session() as session:
        for part_id, cursor in seeded.cursors.items():
            assert unseal_cursor(AFTER, session.get_one(RetentionPart, part_id)) == cursor
        rows = session.scalars(select(ExportPackage)).all()
    for row in rows:
        blob = b"".join(storage.download(row.object_key))
        assert row.key_id == "k2"
        assert row.sha256 == hashlib.sha256(blob).hexdigest()
        plain = b"".join(decrypt_stream([blob], keyring_wrapper(AFTER)))
        assert plain == seeded.packages[row.object_key]


def status_of(db: Database, keyring: Keyring = BOTH) -> dict[str, dict[str, Any]]:
    status: KeyStatus = key_status(db, keyring, primary_id=keyring.newest_id)
    return {use.key_id: use.to_dict() for use in status.keys}


def events(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "keys.rotated")))


def run(
    db: Database, storage: ObjectStorage, keyring: Keyring = BOTH, **options: Any
) -> Mapping[str, int]:
    wrapper = keyring_wrapper(keyring)
    rewrapper = PackageRewrapper(db, storage, wrapper, wrapper)
    report = rotate(db, keyring, rewrapper, actor="alice", clock=utcnow, **options)
    return report.counts


@pytest.fixture
def storage(tmp_path: Path) -> ObjectStorage:
    return FileStorage(tmp_path / "objects")


# --- status -------------------------------------------------------------------------------


def test_status_counts_what_each_key_protects(db: Database, storage: ObjectStorage) -> None:
    seed(db, storage)
    status = status_of(db)
    assert status["k1"] == {
        "key_id": "k1",
        "in_keyring": True,
        "newest": False,
        "primary": False,
        "packages": 2,
        "identities": 3,
        "cursors": 2,
        "removable": False,
    }
    assert status["k2"]["newest"] and status["k2"]["primary"]
    assert (status["k2"]["packages"], status["k2"]["identities"], status["k2"]["cursors"]) == (
        0,
        0,
        0,
    )


def test_status_names_a_key_missing_from_the_keyring(db: Database, storage: ObjectStorage) -> None:
    seed(db, storage)
    status = key_status(db, AFTER, primary_id="k2")
    assert [use.key_id for use in status.missing] == ["k1"]
    assert status.missing[0].protected == 7


def test_status_leaves_deleted_packages_and_wiped_identities_out(
    db: Database, storage: ObjectStorage
) -> None:
    seed(db, storage)
    with db.session() as session:
        for row in session.scalars(select(ExportPackage)):
            row.deleted_at = utcnow()
        for identity in session.scalars(select(DsrIdentity)):
            identity.value_sealed = None
    status = status_of(db)
    assert (status["k1"]["packages"], status["k1"]["identities"]) == (0, 0)


# --- rotation -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["folder", pytest.param("s3", marks=pytest.mark.s3)])
def test_after_a_rotation_everything_opens_without_the_old_key(
    db: Database, request: pytest.FixtureRequest, tmp_path: Path, where: str
) -> None:
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        storage = open_storage(
            Settings(storage_url=f"s3://{bucket}/packages", s3_endpoint_url=endpoint)
        )
    else:
        storage = FileStorage(tmp_path / "objects")
    seeded = seed(db, storage)
    counts = run(db, storage)
    assert (counts["identities"], counts["cursors"], counts["packages"]) == (3, 2, 2)
    assert_readable_without_the_old_key(db, storage, seeded)
    status = status_of(db)
    assert status["k1"]["removable"]
    assert (status["k2"]["packages"], status["k2"]["identities"], status["k2"]["cursors"]) == (
        2,
        3,
        2,
    )


def test_a_second_rotation_has_nothing_to_do(db: Database, storage: ObjectStorage) -> None:
    seed(db, storage)
    run(db, storage)
    with db.session() as session:
        sealed = sorted(v for v in session.scalars(select(DsrIdentity.value_sealed)) if v)
    assert not any(run(db, storage).values())
    with db.session() as session:
        assert sorted(v for v in session.scalars(select(DsrIdentity.value_sealed)) if v) == sealed


class KilledError(Exception):
    """Stands for a rotation killed between two batches."""


def test_a_rotation_stopped_between_batches_carries_on_when_run_again(
    db: Database, storage: ObjectStorage
) -> None:
    seeded = seed(db, storage)
    batches: list[tuple[str, int]] = []

    def stop_after_first(what: str, counts: Mapping[str, int]) -> None:
        batches.append((what, counts.get(what, 0)))
        raise KilledError

    with pytest.raises(KilledError):
        run(db, storage, batch=1, progress=stop_after_first)
    assert batches == [("identities", 1)]
    with db.session() as session:
        kids = [sealed_key_id(v) for v in session.scalars(select(DsrIdentity.value_sealed)) if v]
    assert sorted(kids) == ["k1", "k1", "k2"]

    seen: list[str] = []
    counts = run(db, storage, batch=1, progress=lambda what, _c: seen.append(what))
    assert (counts["identities"], counts["cursors"], counts["packages"]) == (2, 2, 2)
    assert seen == ["identities"] * 2 + ["cursors"] * 2 + ["packages"] * 2
    assert_readable_without_the_old_key(db, storage, seeded)
    first, second = events(db)
    assert first.details == {"key_id": "k2", "finished": False, "batch": 1, "identities": 1}
    assert second.details["finished"] is True
    assert second.details["identities"] == 2


def test_a_package_uploaded_just_before_a_rotation_died_is_not_wrapped_twice(
    db: Database, storage: ObjectStorage
) -> None:
    seeded = seed(db, storage, packages=1)
    (key,) = seeded.packages

    class DiesAfterUpload:
        def __getattr__(self, name: str) -> object:
            return getattr(storage, name)

        def upload(self, key: str, chunks: Iterable[bytes]) -> int:
            storage.upload(key, chunks)
            raise KilledError  # killed before the row was updated

    with pytest.raises(KilledError):
        run(db, DiesAfterUpload())  # type: ignore[arg-type]
    uploaded = b"".join(storage.download(key))
    counts = run(db, storage)
    assert counts["packages"] == 1 and counts["packages_reconciled"] == 1
    assert b"".join(storage.download(key)) == uploaded
    assert_readable_without_the_old_key(db, storage, seeded)


def test_a_dry_run_counts_and_changes_nothing(db: Database, storage: ObjectStorage) -> None:
    seed(db, storage)
    before = status_of(db)
    counts = run(db, storage, dry_run=True)
    assert counts == {"identities": 3, "cursors": 2, "packages": 2, "packages_expiring": 0}
    assert status_of(db) == before
    assert events(db) == []


def test_a_package_about_to_expire_is_left_to_the_expiry_sweep(
    db: Database, storage: ObjectStorage
) -> None:
    request_id = add_request(db, utcnow())
    key = add_package(db, storage, request_id, b"soon gone", timedelta(minutes=10))
    before = b"".join(storage.download(key))
    assert run(db, storage, dry_run=True)["packages_expiring"] == 1
    counts = run(db, storage)
    assert counts["packages_expiring"] == 1 and counts.get("packages", 0) == 0
    assert b"".join(storage.download(key)) == before
    assert status_of(db)["k1"]["packages"] == 1


def test_a_value_no_key_in_the_keyring_opens_is_counted_and_left(
    db: Database, storage: ObjectStorage
) -> None:
    seed(db, storage, packages=0)
    lost = Keyring({"k0": os.urandom(32)}, "k0", PSEUDONYM)
    request_id = add_request(db, utcnow())
    with db.session() as session:
        session.add(
            sealed_identity(
                lost, request_id, Identity("email", "dee@example.com"), discovered=False
            )
        )
    counts = run(db, storage)
    assert counts["identities"] == 3 and counts["identities_unreadable"] == 1
    assert status_of(db)["k0"]["identities"] == 1


def test_the_audit_event_holds_counts_and_key_ids_only(
    db: Database, storage: ObjectStorage
) -> None:
    seed(db, storage)
    run(db, storage)
    (event,) = events(db)
    assert event.actor == "alice" and event.request_id is None and event.subject is None
    details = json.dumps(event.details)
    assert not any(email in details for email in EMAILS)
    assert event.details == {
        "key_id": "k2",
        "finished": True,
        "batch": 100,
        "identities": 3,
        "cursors": 2,
        "packages": 2,
    }


def test_two_rotations_never_run_at_once_on_postgresql(
    pg_settings: Settings, storage: ObjectStorage
) -> None:
    db = Database.connect(pg_settings)
    db.upgrade()
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": 0x6764_706B})
        try:
            with pytest.raises(StateError, match="another `gdpr keys rotate` is running"):
                run(db, storage)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": 0x6764_706B})
            conn.commit()
    db.dispose()


# --- the commands -------------------------------------------------------------------------


def keyring_settings(settings: Settings, tmp_path: Path, *keys: tuple[str, bytes]) -> Settings:
    import base64

    line = ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys)
    return settings.with_overrides(
        keys=line,
        pseudonym_key=base64.b64encode(PSEUDONYM).decode(),
        storage_url=(tmp_path / "objects").as_uri(),
    )


@pytest.fixture
def gdpr(db: Database, settings: Settings, tmp_path: Path) -> Callable[..., Result]:
    """`gdpr ARGS` on `db`, with the keys given."""

    def invoke(*args: str, keys: tuple[tuple[str, bytes], ...]) -> Result:
        app = App()
        app._cache.update(settings=keyring_settings(settings, tmp_path, *keys), db=db)
        app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    return invoke


def test_the_commands_rotate_until_the_old_key_can_be_removed(
    db: Database, gdpr: Callable[..., Result], tmp_path: Path
) -> None:
    seeded = seed(db, FileStorage(tmp_path / "objects"))
    both = (("k1", OLD), ("k2", NEW))
    shown = gdpr("keys", "status", keys=both)
    assert shown.exit_code == 0, shown.output
    assert "key 'k1' still protects 7: run `gdpr keys rotate`" in shown.stdout

    dry = gdpr("keys", "rotate", "--dry-run", keys=both)
    assert dry.exit_code == 0, dry.output
    assert "would move 3 identity value(s), 2 retention cursor(s) and 2 package(s)" in dry.stdout
    assert events(db) == []

    done = gdpr("keys", "rotate", "--batch-size", "1", keys=both)
    assert done.exit_code == 0, done.output
    assert "moved 3 identity value(s), 2 retention cursor(s) and 2 package(s) to key 'k2'" in (
        done.stdout
    )
    assert "key 'k1' protects nothing: it can be removed from GDPR_KEYS" in done.stdout
    again = gdpr("keys", "rotate", keys=both)
    assert "Nothing to do: everything is under key 'k2'." in again.stdout

    after = gdpr("keys", "status", "--json", keys=(("k2", NEW),))
    assert after.exit_code == 0, after.output
    (k2,) = json.loads(after.stdout)["keys"]
    assert (k2["key_id"], k2["packages"], k2["identities"], k2["cursors"]) == ("k2", 2, 3, 2)
    assert_readable_without_the_old_key(db, FileStorage(tmp_path / "objects"), seeded)


def test_status_exits_1_when_a_key_still_needed_was_removed(
    db: Database, gdpr: Callable[..., Result], tmp_path: Path
) -> None:
    seed(db, FileStorage(tmp_path / "objects"), packages=0)
    result = gdpr("keys", "status", keys=(("k2", NEW),))
    assert result.exit_code == 1
    assert "key 'k1' is not in the keyring but protects 5: add it back to GDPR_KEYS" in (
        result.stderr
    )
