"""Run one export request: sources -> package -> encryption -> storage, exactly once.

Idempotent: when the request already has a package, its summary is returned and nothing
is built again. The object key is deterministic, so a retry after a crash overwrites the
same object instead of leaving a second one. The upload is all-or-nothing; each source
gets an `export` step holding its counts (and its error, if it failed), written in the
transaction that records the package (or with a heartbeat while a long export streams):
an export is rebuilt whole on a retry, so its steps checkpoint nothing.

Because the package row and its steps commit together, a run whose steps (read with its
claim) hold no finished export step has no package to look for; only a run after one
that got that far asks the database. `on_package` lets the caller add its own writes to
the package's transaction (the delivery issues the download link there), so a new
package and its link cost one commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from compliance.cascade import discover, store_discovered
from compliance.errors import ComplianceError
from compliance.execution import RunContext, Step, saved_counts
from compliance.identities import Identities, IdentityType
from compliance.models import ExportPackage, column_values
from compliance.sources.base import Action, DataSource, ExportItem, FileItem, RowsItem
from exporters.crypto import encrypt_stream, wrapper_for
from exporters.package import write_package
from exporters.storage import open_storage
from exporters.uploads import UploadLog

log = logging.getLogger("gdpr.exporters.job")

OnPackage = Callable[[Session, ExportPackage], None]  # more writes in the package's transaction
_INSERT_PACKAGE = insert(cast(Table, ExportPackage.__table__))


def package_key(request_id: uuid.UUID) -> str:
    return f"exports/{request_id}.zip.enc"


def run_export(ctx: RunContext, on_package: OnPackage | None = None) -> dict[str, Any]:
    """Build, encrypt and upload the request's package; returns a PII-free summary.
    `on_package` runs inside the transaction that records a new package."""
    existing = _existing(ctx)
    if existing is not None:
        return _summary(ctx, existing, created=False)
    identities = discover(ctx, store=False)  # stored with the package (_record)
    if ctx.dry_run:
        return _plan(ctx, identities)
    now = ctx.clock()
    wrapper = wrapper_for(ctx.settings, ctx.keyring)
    digest = hashlib.sha256()
    plaintext = write_package(
        _all_items(ctx, identities),
        request_id=ctx.request_id,
        generated_at=now,
        subject_label=", ".join(identities.values(IdentityType.EMAIL)),
    )
    key = package_key(ctx.request_id)
    # A multipart upload is on record before its first part: if this run dies, the
    # maintenance sweep aborts it (exporters.uploads).
    uploads = UploadLog(ctx.db, ctx.request_id, ctx.claim, ctx.clock, beat=ctx.steps.beat)
    size = open_storage(ctx.settings).upload(
        key, _hashed(encrypt_stream(plaintext, wrapper), digest), uploads
    )
    row = ExportPackage(
        request_id=ctx.request_id,
        object_key=key,
        size=size,
        sha256=digest.hexdigest(),
        key_id=wrapper.key_id,
        created_at=now,
        expires_at=now + timedelta(days=ctx.settings.package_ttl_days),
    )
    return _record(ctx, row, identities, on_package)


def _existing(ctx: RunContext) -> ExportPackage | None:
    """The request's package, if an earlier run recorded one (module docstring)."""
    if not any(step.done for step in ctx.steps.of(Action.EXPORT).values()):
        return None
    return _package_of(ctx)


def _package_of(ctx: RunContext) -> ExportPackage | None:
    with ctx.db.session() as session:
        return session.scalars(
            select(ExportPackage).where(ExportPackage.request_id == ctx.request_id)
        ).one_or_none()


def _record(
    ctx: RunContext, row: ExportPackage, identities: Identities, on_package: OnPackage | None
) -> dict[str, Any]:
    """The identities discovery found, the package row, the steps and the audit event
    (and the caller's `on_package` writes), in one transaction."""
    counts = _step_counts(ctx)
    try:
        with ctx.db.session() as session:
            store_discovered(ctx, identities, session)  # first: it renews the lease
            session.execute(_INSERT_PACKAGE, column_values(row))
            details = {"size": row.size, "key_id": row.key_id, **_totals(counts)}
            ctx.steps.note("export.packaged", details, at=row.created_at, session=session)
            if on_package is not None:
                on_package(session, row)
            ctx.steps.save(session, renew=False)  # steps, then the events: the chain's lock last
    except SAIntegrityError:  # a concurrent run recorded it first: report that one
        existing = _package_of(ctx)
        if existing is None:
            raise
        return _summary(ctx, existing, created=False)
    log.info("dsr.export.uploaded", extra={"request_id": str(ctx.request_id), "size": row.size})
    return _summary(ctx, row, created=True)


def _summary(ctx: RunContext, row: ExportPackage, *, created: bool) -> dict[str, Any]:
    counts = _step_counts(ctx)
    return {
        "request_id": str(row.request_id),
        "object_key": row.object_key,
        "size": row.size,
        "sha256": row.sha256,
        "key_id": row.key_id,
        "expires_at": row.expires_at.isoformat(),
        "created": created,
        "sources": counts,
        **_totals(counts),
    }


def _step_counts(ctx: RunContext) -> dict[str, dict[str, Any]]:
    return saved_counts(ctx.steps.of(Action.EXPORT).values())


def _totals(counts: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        "sources": len(counts),
        "rows": sum(int(c.get("rows", 0)) for c in counts.values()),
        "files": sum(int(c.get("files", 0)) for c in counts.values()),
    }


def _plan(ctx: RunContext, identities: Identities) -> dict[str, Any]:
    plans = {s.name: s.plan(identities, Action.EXPORT).total for s in ctx.sources}
    return {"request_id": str(ctx.request_id), "dry_run": True, "sources": plans}


def _all_items(ctx: RunContext, identities: Identities) -> Iterator[ExportItem]:
    beat = ctx.steps.beat  # the export checkpoints nothing: keep the claim from looking stale
    for source in ctx.sources:
        yield from _source_items(ctx, source, identities, beat)


def _source_items(
    ctx: RunContext, source: DataSource, identities: Identities, beat: Callable[[], None]
) -> Iterator[ExportItem]:
    step = ctx.steps.start(source.name, Action.EXPORT)
    tally = {"collections": 0, "rows": 0, "files": 0, "bytes": 0}

    def guard() -> AbstractContextManager[None]:
        return _failing_step(ctx, step)

    with guard():
        for item in source.export(identities):
            beat()
            yield _counted(item, tally, guard, beat)
    ctx.steps.update(step, counts=tally, done=True)  # saved with the package row


def _counted(
    item: ExportItem,
    tally: dict[str, int],
    guard: Callable[[], AbstractContextManager[None]],
    beat: Callable[[], None],
) -> ExportItem:
    if isinstance(item, RowsItem):
        tally["collections"] += 1

        def rows() -> Iterator[Any]:
            with guard():
                for row in item.rows:
                    tally["rows"] += 1
                    beat()
                    yield row

        return dataclasses.replace(item, rows=rows())
    tally["files"] += 1

    def chunks() -> Iterator[bytes]:
        with guard():
            for chunk in item.chunks():
                tally["bytes"] += len(chunk)
                beat()
                yield chunk

    return FileItem(item.source, item.path, chunks, item.size, item.meta)


@contextmanager
def _failing_step(ctx: RunContext, step: Step) -> Iterator[None]:
    """Record a source's failure on its step (type and safe message only), then re-raise."""
    try:
        yield
    except Exception as exc:
        detail = f": {exc}" if isinstance(exc, ComplianceError) else ""
        ctx.steps.fail(step, f"{type(exc).__name__}{detail}")
        raise


def _hashed(chunks: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
