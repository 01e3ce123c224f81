"""Delete expired export packages from storage (run by the maintenance task).

Idempotent and safe to interrupt: the object is deleted first (deleting a missing
object is fine), then the row is marked with one conditional UPDATE, so a package is
counted and audited once however many workers run the sweep. The object is deleted once
more after the row is marked: a key rotation (`exporters.rewrap`) that read the package
before the first delete may have uploaded it again, and it records the new object only on
a row not yet marked, so after the second delete no copy outlives its row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from compliance import audit
from compliance.db import Database
from compliance.models import ExportPackage
from exporters.storage import ObjectStorage

log = logging.getLogger("gdpr.exporters.cleanup")
BATCH = 100
ACTOR = "maintenance"


def purge_expired_packages(
    db: Database, storage: ObjectStorage, now: datetime, batch: int = BATCH
) -> int:
    """Delete every package whose `expires_at` is past; returns how many this call marked."""
    purged = 0
    after = 0
    while True:
        due = _due(db, now, after, batch)
        if not due:
            return purged
        for package_id, key in due:
            storage.delete(key)
            purged += _mark_deleted(db, package_id, now)
            storage.delete(key)  # a rotation's upload in between (module docstring)
            after = package_id


def _due(db: Database, now: datetime, after: int, batch: int) -> list[tuple[int, str]]:
    with db.session() as session:
        rows = session.execute(
            select(ExportPackage.id, ExportPackage.object_key)
            .where(
                ExportPackage.deleted_at.is_(None),
                ExportPackage.expires_at <= now,
                ExportPackage.id > after,
            )
            .order_by(ExportPackage.id)
            .limit(batch)
        ).all()
        return [(row.id, row.object_key) for row in rows]


def _mark_deleted(db: Database, package_id: int, now: datetime) -> int:
    with db.session() as session:
        return mark_deleted(session, package_id, now, actor=ACTOR, reason="expired")


def mark_deleted(
    session: Session,
    package_id: int,
    now: datetime,
    *,
    actor: str,
    reason: str,
    details: Mapping[str, str] | None = None,
) -> int:
    """Mark a package whose object was deleted, and audit it, inside the caller's
    transaction: 1 if this call marked it, 0 if it was already marked."""
    result = session.execute(
        update(ExportPackage)
        .where(ExportPackage.id == package_id, ExportPackage.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    if not getattr(result, "rowcount", 0):
        return 0  # another sweep (or an erasure) got there first
    package = session.get_one(ExportPackage, package_id)
    audit.record(
        session,
        actor=actor,
        action="export.package.deleted",
        now=now,
        request_id=package.request_id,
        details={"size": package.size, "reason": reason, **(details or {})},
    )
    log.info(
        "dsr.export.package_deleted",
        extra={"request_id": str(package.request_id), "reason": reason},
    )
    return 1
