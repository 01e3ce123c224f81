"""An erasure reaches the subject's exports: their links are revoked, packages deleted.

An export package is a copy of the subject's data made for the subject; once the data is
erased, the copy must not stay downloadable for the rest of its days. At the end of an
erasure (`tasks.runtime.run_erasure`, before the receipt is mailed) every export request
of the same person loses its download links and its stored package.

Matching is by pseudonym only: an export is the subject's when it shares any identity
pseudonym with the erasure (``dsr_identity.value_hmac``, given or discovered, kept after
the raw values are wiped), so an export asked for by user id and an erasure asked for by
email match once discovery linked the two. Nothing else is matched.

Idempotent and safe to interrupt: the work is a durable step (source ``exports``, action
``revoke``) whose counts grow in the same transaction as the change they count, so a
re-run after a crash counts only what it changed itself; a finished step returns its
counts and touches nothing. Objects are deleted first (a missing object is fine), then
their row is marked with one conditional UPDATE (`exporters.cleanup.mark_deleted`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import or_, select

from compliance.errors import ComplianceError
from compliance.execution import RunContext, Step
from compliance.identities import pseudonym
from compliance.models import (
    DsrIdentity,
    DsrRequest,
    ExportPackage,
    RequestKind,
)
from exporters import links
from exporters.cleanup import mark_deleted
from exporters.storage import ObjectStorage
from exporters.uploads import abort_uploads_of

log = logging.getLogger("gdpr.exporters.revoke")

EXPORTS_SOURCE = "exports"
REVOKE_ACTION = "revoke"
LINKS_REVOKED = "links_revoked"
PACKAGES_DELETED = "packages_deleted"


def revoke_subject_exports(
    ctx: RunContext, storage: ObjectStorage, *, final: bool = True
) -> dict[str, int]:
    """Revoke every live link and delete every stored package of the subject's exports;
    returns the receipt's ``exports`` part: ``{"links_revoked": n, "packages_deleted": m}``.

    `final` marks the step done (the erasure is complete); an erasure waiting on a legal
    hold passes False, so the completing run looks again for exports made meanwhile. A
    storage error propagates (retryable ones retry the task) and leaves the counts of
    what was done. A dry run changes nothing and counts nothing.
    """
    if ctx.dry_run:
        return _counts({})
    step = ctx.steps.start(EXPORTS_SOURCE, REVOKE_ACTION)
    if step.done:
        return _counts(step.counts)
    try:
        exports = subject_exports(ctx)
        _revoke_links(ctx, step, exports)
        # parts of an unfinished upload hold the package header and the wrapped data key
        abort_uploads_of(ctx.db, storage, exports, ctx.clock())
        _delete_packages(ctx, step, storage, exports)
    except ComplianceError as exc:
        ctx.steps.fail(step, str(exc))
        raise
    counts = _counts(step.counts)
    ctx.steps.update(step, done=final)  # saved with the run's next write
    log.info("dsr.erasure.exports_revoked", extra={"request_id": str(ctx.request_id), **counts})
    return counts


def subject_exports(ctx: RunContext) -> list[uuid.UUID]:
    """The export requests sharing any identity pseudonym with the erasure: those of its
    stored identities (given and discovered), of the identities it was given, and its
    subject pseudonym; one statement (the stored ones are read inside it)."""
    key = ctx.keyring.pseudonym_key
    known = sorted({pseudonym(key, i) for i in ctx.identities} | {ctx.subject})
    stored = select(DsrIdentity.value_hmac).where(DsrIdentity.request_id == ctx.request_id)
    by_identity = select(DsrIdentity.request_id).where(
        or_(DsrIdentity.value_hmac.in_(known), DsrIdentity.value_hmac.in_(stored))
    )
    query = (
        select(DsrRequest.id)
        .where(
            DsrRequest.kind == RequestKind.EXPORT,
            DsrRequest.id != ctx.request_id,
            or_(
                DsrRequest.subject.in_(known),
                DsrRequest.subject.in_(stored),
                DsrRequest.id.in_(by_identity),
            ),
        )
        .order_by(DsrRequest.submitted_at, DsrRequest.id)
    )
    with ctx.db.session() as session:
        return list(session.scalars(query))


def _revoke_links(ctx: RunContext, step: Step, exports: Sequence[uuid.UUID]) -> None:
    """Revoke the exports' links first: from here on no link serves a package. The count
    is saved in the same transaction, which renews the lease: if another run took the
    request over, it all rolls back."""
    if not exports:
        return
    with ctx.db.session() as session:
        now = ctx.clock()
        revoked = sum(links.revoke(session, request_id, now, ctx.actor) for request_id in exports)
        ctx.steps.update(step, add_counts={LINKS_REVOKED: revoked})
        ctx.steps.save(session)


def _delete_packages(
    ctx: RunContext, step: Step, storage: ObjectStorage, exports: Sequence[uuid.UUID]
) -> None:
    details = {"erasure": str(ctx.request_id)}
    for package_id, key in _stored_packages(ctx, exports):
        storage.delete(key)
        with ctx.db.session() as session:
            deleted = mark_deleted(
                session, package_id, ctx.clock(), actor=ctx.actor, reason="erased", details=details
            )
            ctx.steps.update(step, add_counts={PACKAGES_DELETED: deleted})
            ctx.steps.save(session)
        storage.delete(key)  # a key rotation's upload in between (exporters.cleanup)


def _stored_packages(ctx: RunContext, exports: Sequence[uuid.UUID]) -> list[tuple[int, str]]:
    if not exports:
        return []
    with ctx.db.session() as session:
        rows = session.execute(
            select(ExportPackage.id, ExportPackage.object_key)
            .where(ExportPackage.request_id.in_(exports), ExportPackage.deleted_at.is_(None))
            .order_by(ExportPackage.id)
        ).all()
    return [(row.id, row.object_key) for row in rows]


def _counts(counts: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(counts.get(name, 0)) for name in (LINKS_REVOKED, PACKAGES_DELETED)}
