"""The erasure runner: discover, erase source by source in bounded chunks, verify, receipt.

Every piece of progress is durable (`dsr_step` rows, written by the run's step log, see
`compliance.execution`): the discover step keeps the resolved identities, each source's
erase step its plan, then its checkpoint and counts with each chunk, so a killed worker
resumes where it stopped and a finished step never runs again.
`run_erasure_chunk` does a bounded amount of work and returns None while more is left
(the worker re-enqueues the request); `run_erasure` runs to the end and returns the receipt.

Verification re-runs discovery at every source: any residue fails the request loudly,
listing locations and counts (never values), and re-opens that source's erase step so a
retry erases again.

A legal hold that covers the subject at a source (`compliance.holds`) keeps that source
untouched: the rest is erased and verified, and the receipt lists what is held, on which
basis and until when (``held``). The request then waits `on_hold`; when the hold ends it
is queued again, erases the held part and completes the receipt. A hold on one table of a
source keeps the subject's whole part of that source (its cascade runs as one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from sqlalchemy.orm import Session

from compliance import audit, defaults, holds
from compliance.cascade import discover, plan_dict, source_plan
from compliance.errors import ComplianceError, ResidualDataError
from compliance.execution import RunContext, Step
from compliance.identities import Identities, pseudonym
from compliance.models import Suppression
from compliance.receipts import reconcile
from compliance.sources.base import Action, DataSource, EraseResult
from compliance.sources.check import refuse_if_gaps

log = logging.getLogger("gdpr.erasure")

_COUNTS = ("deleted", "anonymized", "retained", "detached", "others")


def run_erasure(ctx: RunContext) -> dict[str, Any]:
    """Erase the subject everywhere, verify, and return a PII-free receipt.

    A dry run resolves the identities and returns the plan: no source is changed, and
    no identity is stored.
    """
    result = run_erasure_chunk(ctx, max_seconds=None)
    assert result is not None  # without a deadline the erasure always finishes
    return result


def run_erasure_chunk(ctx: RunContext, *, max_seconds: float | None) -> dict[str, Any] | None:
    """One piece of `run_erasure`, bounded by `max_seconds` (None: to the end): None while
    more is left (run it again, e.g. from a re-enqueued task), else the receipt."""
    if ctx.settings.strict_sources:
        refuse_if_gaps(ctx.sources)
    identities = discover(ctx)
    held = held_sources(ctx, identities)
    if ctx.dry_run:
        plans = [source_plan(s, identities, Action.ERASE) for s in ctx.sources]
        return {**_header(ctx), "sources": [plan_dict(p) for p in plans], **_held(held)}
    if erase_chunk(ctx, identities, max_seconds=max_seconds, skip=held):
        return None
    verify_erasure(ctx, identities, skip=held, suppress=not held)
    return {**receipt(ctx), **_held(held)}


def held_sources(ctx: RunContext, identities: Identities) -> dict[str, list[dict[str, Any]]]:
    """Per source, the legal holds that keep the subject's data there (PII-free)."""
    key = ctx.keyring.pseudonym_key
    pseudonyms = {pseudonym(key, i) for i in identities} | {ctx.subject}
    with ctx.db.session() as session:
        active = holds.active(session, ctx.clock())
    found: dict[str, list[dict[str, Any]]] = {}
    for source in ctx.sources:
        for hold in active:
            if holds.covers(hold, source.name) and holds.applies_to_subject(hold, pseudonyms):
                found.setdefault(source.name, []).append(
                    {
                        "hold": hold.id,
                        "location": hold.location or "*",
                        "legal_basis": hold.legal_basis,
                        "until": hold.expires_at.isoformat() if hold.expires_at else None,
                    }
                )
    return found


def _held(held: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The receipt's ``held`` part: one entry per source kept by a hold."""
    if not held:
        return {}
    entries = [{"source": name, "holds": found} for name, found in held.items()]
    return {"held": entries, "complete": False}


def erase_chunk(
    ctx: RunContext,
    identities: Identities,
    *,
    max_seconds: float | None = defaults.ERASE_CHUNK_SECONDS,
    monotonic: Callable[[], float] = time.monotonic,
    skip: Collection[str] = (),
) -> bool:
    """Erase for up to `max_seconds` (None: until done); True if more is left. Sources
    named in `skip` (kept by a legal hold) are left as they are."""
    deadline = None if max_seconds is None else monotonic() + max_seconds
    for source in ctx.sources:
        if source.name in skip:
            continue
        if not _erase_source(ctx, source, identities, deadline, monotonic):
            return True
    return False


def _erase_source(
    ctx: RunContext,
    source: DataSource,
    identities: Identities,
    deadline: float | None,
    monotonic: Callable[[], float],
) -> bool:
    """Run `source`'s erase step until done (True) or past the deadline (False).

    The plan (what the receipt reports) is saved before the first chunk erases anything;
    each chunk that changed rows has its checkpoint and counts saved once it committed at
    its source, the last one in the same transaction as the source's audit event. A chunk
    that changed nothing (a table found empty, the move to the next table) is saved with
    the next one: run again from the checkpoint before it, it finds the same nothing;
    unless its checkpoint holds what later chunks could not find again (`keep`: the SQL
    cascade's orphaned shared rows, which nothing points at once their users are gone).
    The lease is still renewed in time (`StepLog.beat`)."""
    step = ctx.steps.start(source.name, Action.ERASE)
    if step.done:
        return True
    try:
        if "locations" not in step.counts:
            planned = plan_dict(source_plan(source, identities, Action.ERASE))
            ctx.steps.update(step, counts={"locations": planned["locations"]})
            ctx.steps.save()
        checkpoint: Mapping[str, Any] = step.checkpoint
        while True:
            result = source.erase(identities, checkpoint, ctx.settings.batch_size)
            counts = _counts(result)
            ctx.steps.update(
                step, checkpoint=result.checkpoint, add_counts=counts, done=result.done
            )
            checkpoint = result.checkpoint
            late = deadline is not None and monotonic() >= deadline
            if result.done or late or result.keep or any(counts.values()):
                with ctx.db.session() as session:
                    ctx.steps.save(session)
                    if result.done:
                        _audit_source(session, ctx, step)
            else:
                ctx.steps.beat()
            if result.done:
                log.info("dsr.erasure.source_erased", extra={"request_id": str(ctx.request_id)})
                return True
            if late:
                return False
    except ComplianceError as exc:
        ctx.steps.fail(step, str(exc))
        raise


def _counts(result: EraseResult) -> dict[str, int]:
    return {name: getattr(result, name) for name in _COUNTS}


def _audit_source(session: Session, ctx: RunContext, step: Step) -> None:
    audit.record(
        session,
        actor=ctx.actor,
        action="erasure.source_erased",
        now=ctx.clock(),
        request_id=ctx.request_id,
        subject=ctx.subject,
        details={"source": step.source, **{k: int(step.counts.get(k, 0)) for k in _COUNTS}},
    )


# --- verify --------------------------------------------------------------------------------


def verify_erasure(
    ctx: RunContext,
    identities: Identities,
    skip: Collection[str] = (),
    *,
    suppress: bool = False,
) -> None:
    """Look for the subject again everywhere (but in `skip`: sources a legal hold keeps);
    raise `ResidualDataError` listing residue. With nothing left, `suppress` remembers the
    subject (in the same transaction as the verify steps and their audit event)."""
    residue: list[str] = []
    for source in ctx.sources:
        if source.name in skip:
            continue
        step = ctx.steps.start(source.name, Action.VERIFY)
        found = source.verify(identities)
        total = sum(r.count for r in found)
        locations = [{"location": r.location, "count": r.count} for r in found]
        ctx.steps.update(step, counts={"residue": total, "locations": locations}, done=not found)
        if found:
            ctx.steps.reopen(source.name, Action.ERASE)
            ctx.steps.fail(step, f"{total} item(s) left")
            residue.extend(f"{r.location}: {r.count}" for r in found)
    with ctx.db.session() as session:
        ctx.steps.save(session)
        audit.record(
            session,
            actor=ctx.actor,
            action="erasure.verified",
            now=ctx.clock(),
            request_id=ctx.request_id,
            subject=ctx.subject,
            details={"residue": len(residue)},
        )
        if suppress and not residue:
            _suppress(session, ctx, identities)
    if residue:
        raise ResidualDataError(
            "personal data is still there after erasure (" + "; ".join(residue) + "); "
            "retry the request to erase again, or fix the manifest"
        )


def _suppress(session: Session, ctx: RunContext, identities: Identities) -> None:
    """Remember the erased subject by pseudonyms, to erase again after a backup restore."""
    key = ctx.keyring.pseudonym_key
    hmacs: dict[str, list[str]] = {}
    for identity in identities:
        hmacs.setdefault(identity.type, []).append(pseudonym(key, identity))
    row = session.get(Suppression, ctx.subject)
    if row is None:
        row = Suppression(subject=ctx.subject, identity_hmacs={})
        session.add(row)
    merged = {k: sorted(set(row.identity_hmacs.get(k, [])) | set(v)) for k, v in hmacs.items()}
    row.identity_hmacs = {**row.identity_hmacs, **merged}
    row.request_id = ctx.request_id
    row.erased_at = ctx.clock()


# --- receipt -------------------------------------------------------------------------------


def receipt(ctx: RunContext) -> dict[str, Any]:
    """Per source: counts and the planned locations (what was deleted, anonymised,
    retained and on what legal basis). Names and counts only."""
    steps = {name: step.counts for name, step in ctx.steps.of(Action.ERASE).items()}
    sources = []
    for source in ctx.sources:
        counts = steps.get(source.name, {})
        entry = {
            "source": source.name,
            "kind": source.kind,
            **{k: int(counts.get(k, 0)) for k in _COUNTS},
            "locations": counts.get("locations", []),
        }
        sources.append(reconcile(entry))  # counts == the sums of its lines
    totals = {k: sum(s[k] for s in sources) for k in _COUNTS}
    return {**_header(ctx), **totals, "sources": sources, "verified": True}


def _header(ctx: RunContext) -> dict[str, Any]:
    return {
        "request_id": str(ctx.request_id),
        "kind": "erasure",
        "dry_run": ctx.dry_run,
        "at": ctx.clock().isoformat(),
    }
