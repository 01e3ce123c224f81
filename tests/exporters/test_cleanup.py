"""Expired packages leave storage once, are marked deleted and audited; others stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from compliance.config import Settings
from compliance.db import Database
from compliance.models import AuditEvent, ExportPackage, RequestKind
from exporters.cleanup import purge_expired_packages
from exporters.storage import ObjectStorage, open_storage
from tests.compliance.helpers import NOW, submit_request


def add_package(db: Database, settings: Settings, storage: ObjectStorage, days_left: int) -> str:
    request = submit_request(db, settings, RequestKind.EXPORT)
    key = f"exports/{request.id}.zip.enc"
    storage.upload(key, [b"ciphertext"])
    with db.session() as session:
        session.add(
            ExportPackage(
                request_id=request.id,
                object_key=key,
                size=10,
                sha256="0" * 64,
                key_id="k1",
                created_at=NOW - timedelta(days=30),
                expires_at=NOW + timedelta(days=days_left),
            )
        )
    return key


def test_expired_packages_are_deleted_marked_and_audited_once(
    db: Database, settings: Settings
) -> None:
    storage = open_storage(settings)
    expired = [add_package(db, settings, storage, -1) for _ in range(3)]
    current = add_package(db, settings, storage, 5)
    assert purge_expired_packages(db, storage, NOW, batch=2) == 3
    assert not any(storage.exists(key) for key in expired)
    assert storage.exists(current)
    with db.session() as session:
        marked = session.scalars(
            select(ExportPackage.object_key).where(ExportPackage.deleted_at == NOW)
        ).all()
        assert sorted(marked) == sorted(expired)
        deleted_events = select(func.count()).where(AuditEvent.action == "export.package.deleted")
        assert session.scalar(deleted_events) == 3
    assert purge_expired_packages(db, storage, NOW) == 0


def test_a_package_whose_object_is_already_gone_is_still_marked(
    db: Database, settings: Settings
) -> None:
    storage = open_storage(settings)
    key = add_package(db, settings, storage, -1)
    storage.delete(key)
    assert purge_expired_packages(db, storage, NOW) == 1
